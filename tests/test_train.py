"""Tests for reluinv.train: recipes, training on the embedded digits, and the weights cache.

Kept fast (a few seconds): recipes of one or two epochs on a few hundred digits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import reluinv.train as train_module
from reluinv.data import Dataset, load_circles, load_embedded_digits
from reluinv.train import (
    CACHE_ENV_VAR,
    PAPER_RECIPES,
    QUICK_EPOCHS,
    Recipe,
    build_model,
    cache_key,
    default_cache_dir,
    evaluate,
    paper_recipe,
    quick_recipe,
    train,
)
from reluinv.zoo import ARCHITECTURES

# One epoch of the Table 2 MLP on 300 digits reaches about 75 % test accuracy (chance: 10 %).
TINY = Recipe("mlp_table2", "adam", 1e-3, epochs=1, batch_size=50)
# Cheaper still, for tests that only need *some* training to happen.
TINIER = Recipe("mlp_table1", "adam", 1e-3, epochs=1, batch_size=25)


@pytest.fixture(scope="module")
def digits_train() -> Dataset:
    return load_embedded_digits("train", limit=300)


@pytest.fixture(scope="module")
def digits_test() -> Dataset:
    return load_embedded_digits("test", limit=200)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These models are tiny: a second thread only adds synchronisation, and when other processes
    # share the cores it slows training several-fold.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_stray_cache(monkeypatch, tmp_path):
    # A test that forgets cache_dir must not litter the working tree.
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))


def _fit_must_not_run(*args, **kwargs):
    raise AssertionError("training ran although the weights were cached")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------
# Training and the cache


def test_tiny_recipe_learns_writes_cache_and_second_call_loads_it(
    tmp_path, digits_train, digits_test, monkeypatch
):
    model, info = train(TINY, digits_train, test_set=digits_test, cache_dir=tmp_path, progress=False)

    assert not info.from_cache
    assert info.test_accuracy is not None and info.test_accuracy > 0.5  # chance is 0.1
    assert info.train_accuracy > 0.5
    assert len(info.epoch_losses) == TINY.epochs and info.train_seconds > 0
    assert not model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert info.cache_path is not None and info.cache_path.parent == tmp_path and info.cache_path.is_file()
    assert info.cache_path.name.startswith("mlp_table2-digits-") and len(info.cache_key) == 64
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # the temporary file was renamed

    monkeypatch.setattr(train_module, "_fit", _fit_must_not_run)
    again, info2 = train(TINY, digits_train, test_set=digits_test, cache_dir=tmp_path, progress=False)
    assert info2.from_cache
    assert _same_weights(model, again)
    assert not again.training
    assert info2.test_accuracy == info.test_accuracy
    assert info2.cache_key == info.cache_key and info2.epoch_losses == info.epoch_losses
    # A different test set is evaluated afresh on a cache hit.
    other_test = load_embedded_digits("test", limit=100)
    _, info3 = train(TINY, digits_train, test_set=other_test, cache_dir=tmp_path, progress=False)
    assert info3.from_cache and info3.test_accuracy == pytest.approx(evaluate(again, other_test))


def test_training_is_deterministic_and_leaves_the_global_rng_alone(digits_train):
    data = digits_train.head(100)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, _ = train(TINIER, data, use_cache=False, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    second, _ = train(TINIER, data, use_cache=False, progress=False)
    assert _same_weights(first, second)
    third, _ = train(TINIER.replace(seed=1), data, use_cache=False, progress=False)
    assert not _same_weights(first, third)


def test_num_threads_is_restored(digits_train):
    before = torch.get_num_threads()
    train(TINIER, digits_train.head(50), use_cache=False, progress=False, num_threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        train(TINIER, digits_train.head(50), use_cache=False, progress=False, num_threads=0)


def test_use_cache_false_writes_nothing(tmp_path, digits_train):
    _, info = train(TINIER, digits_train.head(50), cache_dir=tmp_path, use_cache=False, progress=False)
    assert info.cache_path is None and not info.from_cache and list(tmp_path.iterdir()) == []
    assert info.test_accuracy is None


def test_cache_key_tracks_recipe_and_data_not_names(digits_train):
    key = cache_key(TINY, digits_train)
    for change in ({"seed": 1}, {"lr": 2e-3}, {"epochs": 2}, {"batch_size": 64}, {"optimizer": "rmsprop"},
                   {"lr_decay": 1e-6}, {"init": "torch"}):  # fmt: skip
        assert cache_key(TINY.replace(**change), digits_train) != key, change
    assert cache_key(TINY.replace(architecture="mlp_table1"), digits_train) != key

    images = np.array(digits_train.images)
    images[0, 0, 14, 14] += 1 / 255
    nudged = Dataset(images, digits_train.labels, name="digits", source="", split="train")
    assert cache_key(TINY, nudged) != key
    relabelled_labels = np.array(digits_train.labels)
    relabelled_labels[0] = (relabelled_labels[0] + 1) % 10
    relabelled = Dataset(digits_train.images, relabelled_labels, name="digits", source="", split="train")
    assert cache_key(TINY, relabelled) != key
    assert cache_key(TINY, digits_train.head(299)) != key

    renamed = Dataset(
        digits_train.images, digits_train.labels, name="other", source="elsewhere", split="test"
    )
    assert cache_key(TINY, renamed) == key
    assert cache_key(Recipe(**dataclasses.asdict(TINY)), digits_train) == key


def test_changed_recipe_misses_the_cache(tmp_path, digits_train):
    data = digits_train.head(60)
    _, first = train(TINIER, data, cache_dir=tmp_path, progress=False)
    _, second = train(TINIER.replace(seed=5), data, cache_dir=tmp_path, progress=False)
    assert not second.from_cache and second.cache_path != first.cache_path
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch, digits_train):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "from-env"))
    assert default_cache_dir() == tmp_path / "from-env"
    _, info = train(TINIER, digits_train.head(50), progress=False)
    assert info.cache_path is not None and info.cache_path.parent == tmp_path / "from-env"

    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / ".reluinv-cache"


def test_unreadable_cache_file_is_retrained_with_a_warning(tmp_path, digits_train):
    data = digits_train.head(50)
    model, info = train(TINIER, data, cache_dir=tmp_path, progress=False)
    assert info.cache_path is not None
    info.cache_path.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="unreadable cache file"):
        again, info2 = train(TINIER, data, cache_dir=tmp_path, progress=False)
    assert not info2.from_cache and _same_weights(model, again)
    _, info3 = train(TINIER, data, cache_dir=tmp_path, progress=False)
    assert info3.from_cache


def test_an_unwritable_cache_warns_at_the_caller_and_keeps_the_model(tmp_path, digits_train):
    data = digits_train.head(50)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not write the cache file") as caught:
        model, info = train(TINIER, data, cache_dir=blocker, progress=False)
    assert caught[0].filename == __file__  # the warning points at the call of train
    assert info.cache_path is None and not info.from_cache and info.cache_key == cache_key(TINIER, data)
    fresh, _ = train(TINIER, data, use_cache=False, progress=False)
    assert _same_weights(model, fresh)


def test_progress_bar_goes_to_stderr(capsys, digits_train):
    train(TINIER, digits_train.head(50), use_cache=False, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train mlp_table1 on digits" in captured.err


def test_cnn_and_toy_recipes_run(digits_train):
    cnn_recipe = paper_recipe("thin_cifar").replace(epochs=1)
    model, info = train(cnn_recipe, digits_train.head(64), use_cache=False, progress=False)
    assert model(torch.tensor(digits_train.images[:3])).shape == (3, 10)
    assert len(info.epoch_losses) == 1

    toy = quick_recipe("toy_circles").replace(epochs=50)
    model, info = train(
        toy, load_circles("train"), test_set=load_circles("test"), use_cache=False, progress=False
    )
    assert model(torch.zeros(4, 2)).shape == (4, 2) and info.test_accuracy is not None


def test_train_rejects_mismatched_inputs(digits_train):
    with pytest.raises(ValueError, match="test_set"):
        train(TINIER, digits_train, test_set=load_circles("test"), use_cache=False, progress=False)
    with pytest.raises(ValueError, match="toy_circles"):
        train(quick_recipe("toy_circles"), digits_train, use_cache=False, progress=False)
    with pytest.raises(TypeError, match="Dataset"):
        train(TINIER, digits_train.images, use_cache=False, progress=False)


# ------------------------------------------------------------------------------------------------
# Recipes and models


def test_paper_recipes_follow_appendix_a4():
    assert set(PAPER_RECIPES) == set(ARCHITECTURES) == set(QUICK_EPOCHS)
    for name in ("mlp_table1", "mlp_table2"):
        r = paper_recipe(name)
        assert (r.optimizer, r.epochs, r.batch_size) == ("adam", 25, 1000)
    for name in ("wide_cifar", "thin_cifar"):
        r = paper_recipe(name)
        assert (r.optimizer, r.lr, r.lr_decay, r.epochs, r.batch_size) == ("rmsprop", 1e-4, 1e-6, 100, 32)
    assert paper_recipe("toy_circles").batch_size is None
    assert paper_recipe("mlp_table1", seed=7).seed == 7


def test_quick_recipes_only_cut_epochs():
    for name, paper in PAPER_RECIPES.items():
        quick = quick_recipe(name)
        assert quick.epochs == QUICK_EPOCHS[name] <= paper.epochs
        assert quick.replace(epochs=paper.epochs) == paper
    assert paper_recipe("wide_cifar").quick(epochs=2).epochs == 2
    assert paper_recipe("mlp_table1").replace(epochs=3).quick().epochs == 3  # never more than before


@pytest.mark.parametrize(
    "change",
    [
        {"architecture": "resnet"},
        {"optimizer": "sgd"},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"epochs": 0},
        {"epochs": 2.0},
        {"batch_size": 0},
        {"seed": -1},
        {"lr_decay": -1.0},
        {"rho": 1.0},
        {"init": "he"},
    ],  # fmt: skip
)
def test_recipe_validation(change):
    with pytest.raises(ValueError):
        TINY.replace(**change)


def test_recipe_normalises_numpy_scalars():
    recipe = TINY.replace(lr=np.float32(0.5), epochs=np.int64(2), seed=np.int32(3))
    assert type(recipe.lr) is float and type(recipe.epochs) is int and type(recipe.seed) is int
    assert recipe == TINY.replace(lr=0.5, epochs=2, seed=3)


def test_build_model_sizes_every_architecture():
    x_digits, x_cifar = torch.zeros(2, 1, 28, 28), torch.zeros(2, 3, 32, 32)
    for name in ("mlp_table1", "mlp_table2", "wide_cifar", "thin_cifar"):
        assert build_model(name, input_shape=(1, 28, 28), classes=10)(x_digits).shape == (2, 10)
    assert build_model("wide_cifar", input_shape=(3, 32, 32), classes=10)(x_cifar).shape == (2, 10)
    assert build_model("toy_circles", input_shape=(2,), classes=2)(torch.zeros(2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="square"):
        build_model("thin_cifar", input_shape=(3, 32, 30), classes=10)
    with pytest.raises(ValueError, match="unknown"):
        build_model("vgg", input_shape=(3, 32, 32), classes=10)


def test_glorot_initialisation_zeroes_biases(digits_train):
    fresh = train_module._initial_model(TINIER, digits_train)
    linear = fresh[1]
    assert torch.count_nonzero(linear.bias) == 0
    bound = (6 / (linear.in_features + linear.out_features)) ** 0.5
    assert linear.weight.abs().max() <= bound
    torch_init = train_module._initial_model(TINIER.replace(init="torch"), digits_train)
    assert torch.count_nonzero(torch_init[1].bias) > 0


def test_first_bias_init_sets_only_the_first_layer():
    from reluinv.train import _initial_model

    ds = load_embedded_digits("train", limit=20)
    model = _initial_model(quick_recipe("mlp_table1").replace(first_bias_init=-0.5), ds)
    assert torch.all(model[1].bias == -0.5)
    assert torch.all(model[3].bias == 0.0)
    with pytest.raises(ValueError, match="first_bias_init"):
        quick_recipe("mlp_table1").replace(first_bias_init=float("nan"))
