"""Every registered model: builds, right output shape, no NaN, every parameter learns, safe reload, ONNX parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models import count_params, create_model, list_models, model_info

EXPECTED_PARAMS = {  # SPEC S1, for 3 classes
    ("cnn_reference", None): 21_699,
    ("pooling_cnn", "stride"): 33_219,
    ("pooling_cnn", "max"): 33_219,
    ("pooling_cnn", "avg"): 33_219,
}
IN_SHAPES = {"cifar100": (32, 32, 3), "cifar10": (32, 32, 3), "mnist": (28, 28, 1), "digits": (8, 8, 1)}
CLASSIFIERS = [n for n in list_models() if model_info(n).dataset != "segdigits"]  # U-Nets: tests/test_segmentation.py


def build(name: str, num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    info = model_info(name)
    shape = IN_SHAPES.get(info.dataset, (32, 32, 3))
    return create_model(name, num_classes=num_classes, in_shape=shape, mean=(0.5,) * shape[2], std=(0.25,) * shape[2])


def example(name: str, batch: int = 4) -> torch.Tensor:
    shape = IN_SHAPES.get(model_info(name).dataset, (32, 32, 3))
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)) * 255


@pytest.mark.parametrize(("name", "pooling"), list(EXPECTED_PARAMS))
def test_notebook_parameter_counts(name, pooling):
    model = create_model(name, num_classes=3, **({"pooling": pooling} if pooling else {}))
    assert count_params(model) == EXPECTED_PARAMS[(name, pooling)]


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match="unknown model 'nope'; known: .*pooling_cnn"):
        create_model("nope")


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="takes no option"):
        create_model("cnn_reference", pooling="max")
    with pytest.raises(ValueError, match="pooling must be one of stride, max, avg"):
        create_model("pooling_cnn", pooling="median")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name):
    model = build(name).train()
    out = model(example(name))
    assert out.shape == (4, 3)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_state_dict_roundtrip_weights_only(name):
    model = build(name).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = build(name).eval()
    torch.nn.init.zeros_(next(fresh.parameters()))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = example(name)
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_onnx_export_matches_onnxruntime(name):
    from pipelines.export_onnx import session, to_onnx

    model = build(name).eval()
    shape = IN_SHAPES.get(model_info(name).dataset, (32, 32, 3))
    proto = to_onnx(model, shape)
    x = example(name, batch=5).numpy()  # a batch size the export never saw: the batch axis is dynamic
    got = session(proto).run(["output"], {"input": x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4, rtol=0)
