"""The DEVICE parameter: resolution, clear failures on a machine without the device, and its threading through
model building, training and the organism cache (run on the CPU; a GPU machine also runs the cuda case)."""
import pytest
import torch

from lib.book import runner
from lib.organisms import device as D


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_names_and_auto(no_gpu):
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device(" CPU ") == torch.device("cpu")
    assert D.resolve_device("auto") == torch.device("cpu")  # no GPU visible: auto takes the CPU


def test_cuda_without_gpu_fails_naming_the_parameter(no_gpu):
    with pytest.raises(D.DeviceUnavailableError, match=r"DEVICE='cuda' but this machine has no usable CUDA GPU"):
        D.resolve_device("cuda")
    with pytest.raises(D.DeviceUnavailableError, match="MY_DEV='cuda:1'"):
        D.resolve_device("cuda:1", name="MY_DEV")


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "tpu", ""])
def test_unknown_device_names_the_choices(bad):
    with pytest.raises(ValueError, match=r"DEVICE=.* is not a device: choose one of cpu, cuda, cuda:N, auto"):
        D.resolve_device(bad)


def test_non_string_device():
    with pytest.raises(ValueError, match="DEVICE must be a string.*got int 0"):
        D.resolve_device(0)


@pytest.mark.parametrize("stem", runner.chapters())
def test_every_chapter_takes_device_and_validates_it(stem, no_gpu):
    params = runner.notebook_parameters(stem)
    assert params["DEVICE"].default == "cpu", f"{stem}: DEVICE must default to 'cpu' (the book's 2-core budget)"
    assert runner.validate_params(stem, {"DEVICE": "auto"}) == {"DEVICE": "auto"}
    with pytest.raises(runner.ParameterError, match=f"chapter '{stem}': DEVICE='cuda'"):
        runner.validate_params(stem, {"DEVICE": "cuda"})
    with pytest.raises(runner.ParameterError, match="DEVICE='gpu' is not a device"):
        runner.validate_params(stem, {"DEVICE": "gpu"})


def test_models_follow_use_device_and_training_moves_batches(monkeypatch):
    from lib.organisms.models import ModelSpec, build_model
    from lib.organisms.train import TrainConfig, train

    monkeypatch.setattr(D, "_CURRENT", torch.device("cpu"))
    assert D.use_device("cpu") == D.current_device() == torch.device("cpu")
    spec = ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=8, d_vocab=11)
    model = build_model(spec)
    assert D.model_device(model) == torch.device("cpu")
    seen = []

    def batch_fn(step, b):  # CPU tensors, as every data source in lib returns them
        t = torch.randint(0, 11, (b, 8), generator=torch.Generator().manual_seed(step))
        seen.append(t.device)
        return t, torch.ones_like(t, dtype=torch.bool)

    hist = train(model, batch_fn, TrainConfig(steps=3, batch_size=4, log_every=1))
    assert len(hist["loss"]) == 3 and all(d == torch.device("cpu") for d in seen)


def test_gpu_trained_organisms_get_their_own_cache_key(monkeypatch):
    from lib.organisms import ioi_zoo

    recipe = ioi_zoo.base_recipe(steps=10, d_model=32, n_layers=1, seed=0)
    monkeypatch.setattr(D, "_CURRENT", torch.device("cpu"))
    cpu_key, cpu_id = recipe.key(), recipe.identity()
    assert "device" not in cpu_id  # CPU keys are what they were before DEVICE existed
    monkeypatch.setattr(D, "_CURRENT", torch.device("cuda"))  # a device object needs no GPU to exist
    assert recipe.identity()["device"] == "cuda" and recipe.key() != cpu_key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(monkeypatch):  # pragma: no cover - runs only where a GPU is visible
    from lib.organisms.models import ModelSpec, build_model
    from lib.organisms.train import TrainConfig, train

    monkeypatch.setattr(D, "_CURRENT", torch.device("cpu"))
    D.use_device("cuda")
    model = build_model(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=8, d_vocab=11))
    assert D.model_device(model).type == "cuda"
    train(model, lambda s, b: (torch.randint(0, 11, (b, 8)), torch.ones(b, 8, dtype=torch.bool)),
          TrainConfig(steps=2, batch_size=4))
