from __future__ import annotations

from pathlib import Path

import pytest

from saliency_cli.config import Config, load_config
from saliency_cli.errors import SaliencyError
from saliency_cli.methods import registry

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_builtin_default_is_the_shipped_default_config():
    assert load_config(ROOT / "configs" / "efficientnet_lite0.yaml") == Config()
    assert Config().model.factory == "saliency_cli.models:efficientnet_lite0"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(name):
    cfg = load_config(ROOT / "configs" / name)
    sources = [k for k in ("arch", "factory", "timm", "ultralytics", "checkpoint") if getattr(cfg.model, k)]
    assert sources and cfg.run, (sources, cfg.run)
    for method in cfg.run:
        assert registry.get(method).task == cfg.task
        cfg.method_params(method)


def test_precedence_file_then_set(tmp_path):
    path = write(tmp_path, "runtime: {batch_size: 4, top_k: 3}\nmethods: {smoothgrad: {n: 7}}\n")
    cfg = load_config(path)
    assert (cfg.runtime.batch_size, cfg.runtime.top_k) == (4, 3)
    assert cfg.method_params("smoothgrad").n == 7
    cfg = load_config(path, ["runtime.batch_size=16", "methods.smoothgrad.base=guided-backprop"])
    assert cfg.runtime.batch_size == 16 and cfg.runtime.top_k == 3
    params = cfg.method_params("smoothgrad")
    assert (params.n, params.base) == (7, "guided-backprop")
    # a section given in the file replaces that section's defaults, key by key
    assert cfg.preprocess.size == [224, 224]


def test_set_parses_yaml_values():
    cfg = load_config(None, ["preprocess.size=[256, 192]", "output.overlay=false",
                             "methods.smoothgrad.noise_level=1e-2", "runtime.target=tabby"])
    assert cfg.preprocess.size == [256, 192]
    assert cfg.output.overlay is False
    assert cfg.method_params("smoothgrad").noise_level == pytest.approx(0.01)
    assert cfg.runtime.target == "tabby"


def test_single_int_size_means_square():
    assert load_config(None, ["preprocess.size=160"]).preprocess.size == [160, 160]


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("runtime: {bach_size: 3}", [], "unknown key 'runtime.bach_size' (did you mean 'batch_size'?)"),
        ("modle: {}", [], "unknown key 'modle' (did you mean 'model'?)"),
        ("runtime: {batch_size: many}", [], "runtime.batch_size: expected an integer, got 'many'"),
        ("output: {overlay: 3}", [], "output.overlay: expected true/false"),
        ("preprocess: {resize: squash}", [], "expected one of 'stretch', 'center-crop'"),
        ("run: [gradient, gradcam2]", [], "unknown method 'gradcam2'"),
        ("methods: {smoothgrad: {nn: 3}}", [], "unknown key 'methods.smoothgrad.nn' (did you mean 'n'?)"),
        ("methods: {smoothgrad: {base: cam}}", [], "base must be a pixel-space method"),
        ("methods: {smoothgrad: {base: gradcam}}", [], "unknown method 'gradcam'"),
        ("methods: {gradient: {reduce: mean}}", [], "methods.gradient.reduce: expected one of"),
        ("model: {arch: resnet18, factory: 'a:b'}", [], "either 'arch' or 'factory'"),
        ("model: {}", [], "name an 'arch'"),
        ("runtime: {batch_size: 0}", [], "batch_size must be >= 1"),
        ("[1, 2]", [], "expected a mapping at the top level"),
        ("runtime: {batch_size: [", [], "not valid YAML"),
        ("", ["runtime.batch_size"], "--set expects key.path=value"),
        ("runtime: {batch_size: 3}", ["runtime.batch_size.x=1"], "is a value, not a section"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(SaliencyError) as err:
        load_config(write(tmp_path, text), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)  # one line on stderr


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(SaliencyError) as err:
        load_config(write(tmp_path, "output: {colour: red}"))
    assert "valid: alpha, clip_percentile, colormap, grid, npy, overlay, png, png_compression, png_max_side, " \
           "renderer, report" in str(err.value)


def test_missing_config_file():
    with pytest.raises(SaliencyError, match="cannot read config"):
        load_config("/nonexistent/config.yaml")


def test_yaml_is_read_safely(tmp_path):
    path = write(tmp_path, "labels: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SaliencyError, match="not valid YAML"):
        load_config(path)


def test_set_on_the_built_in_model_keeps_it_unless_it_names_another():
    assert load_config(None, ["model.trust_checkpoint=false"]).model.factory == Config().model.factory
    checkpoint = load_config(None, ["model.checkpoint=weights.pt"]).model
    assert (checkpoint.factory, checkpoint.checkpoint) == (Config().model.factory, "weights.pt")
    other = load_config(None, ["model.arch=resnet18"]).model  # another model: the default's factory goes
    assert (other.arch, other.factory) == ("resnet18", None)


def test_settings_added_later_keep_earlier_digests():
    """Outputs written before a setting existed stay current after an
    upgrade: the default config's digests are those of the first release."""
    from saliency_cli.plan import settings_digest

    cfg = load_config(None)
    assert {name: settings_digest(cfg, cfg.method_params(name)) for name in ("gradient", "grad-cam")} == \
        {"gradient": "3cd33de994f74cdd", "grad-cam": "bf37e725cf74a433"}


def test_an_unknown_method_is_told_with_the_methods_of_the_configs_task(tmp_path):
    with pytest.raises(SaliencyError) as err:
        load_config(write(tmp_path, "run: [gradiant]"))
    message = str(err.value)
    assert "unknown method 'gradiant' (did you mean 'gradient'" in message
    assert "valid: all, attention-rollout, cam, deconvnet," in message and "d-rise" not in message


def test_run_all_is_minus_m_all_and_an_empty_run_needs_minus_m(tmp_path):
    from saliency_cli.pipeline import _bind

    every = _bind(load_config(write(tmp_path, "run: [all]")), None)
    assert list(every) == registry.names("classification") and all(b.optional for b in every.values())
    assert list(every) == list(_bind(Config(), ["all"]))
    empty = load_config(write(tmp_path, "run: []"))
    with pytest.raises(SaliencyError, match=r"^no method to run: the config's `run` list is empty and no -m"):
        _bind(empty, None)
    assert list(_bind(empty, ["gradient"])) == ["gradient"]
