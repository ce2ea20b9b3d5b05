from pathlib import Path

import pytest

from vitbench.errors import SuiteError
from vitbench.suite import expand, load_suite

SUITES = sorted((Path(__file__).resolve().parent.parent / "vitbench" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_shipped_suites_validate(path):
    suite = load_suite(path)
    assert expand(suite, "cpu")


GOOD = """
name: s
defaults: {batch_sizes: [1, 4], compile: [eager]}
pairs:
  - name: p
    reference: {provider: timm, model: test_vit}
    candidates:
      - {provider: vitbench, model: test_vit, batch_sizes: [2]}
"""


def test_expand_orders_reference_first_and_applies_overrides(write_suite):
    cases = expand(load_suite(write_suite(GOOD)), "cpu")
    assert [(c.role, c.batch_size) for c in cases] == [("reference", 1), ("reference", 4), ("candidate", 2)]
    assert cases[2].reference.model == "test_vit" and cases[0].reference is None
    assert len({c.case_id for c in cases}) == 3
    assert [c.batch_size for c in expand(load_suite(write_suite(GOOD)), "cpu", batch_sizes=[8])] == [8, 8]
    assert expand(load_suite(write_suite(GOOD)), "cpu", only="nomatch*") == []


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: [unclosed\n", "invalid YAML"),
        ("- just a list\n", "a suite is a mapping"),
        ("name: s\npairs:\n  - name: x\n    reference: {provider: timm, model: vit_smal_patch16_224}\n",
         "pairs.0.reference.model: unknown timm model 'vit_smal_patch16_224' (did you mean 'vit_small_patch16_224'?)"),
        ("name: s\npairs:\n  - name: x\n    reference: {provider: timm, model: test_vit}\n    colour: red\n",
         "pairs.0.colour: Extra inputs are not permitted"),
        ("name: s\npairs:\n  - name: x\n    reference: {provider: nope, model: m}\n", "pairs.0.reference.provider"),
        ("name: s\ndefaults: {batch_sizes: [0]}\npairs:\n  - name: x\n"
         "    reference: {provider: timm, model: test_vit}\n",
         "defaults.batch_sizes: batch sizes must be"),
        ("name: s\npairs:\n  - name: x\n    reference: {provider: vitbench, model: vit_huge}\n",
         "pairs.0.reference.model: unknown vitbench model 'vit_huge'"),
        ("name: s\npairs:\n  - name: x\n    reference: {provider: import, model: nomodule}\n",
         "must look like 'package.module:Name'"),
        ("name: s\npairs:\n  - {name: x, reference: {provider: timm, model: test_vit}}\n"
         "  - {name: x, reference: {provider: timm, model: test_vit}}\n", "duplicate pair name"),
        ("name: s\npairs: []\n", "pairs: List should have at least 1 item"),
    ],
)
def test_errors_name_file_and_field(write_suite, text, message):
    path = write_suite(text, "bad.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    print(msg)
    assert msg.startswith("bad.yaml:")
    assert message in msg
    assert "\n" not in msg


def test_missing_file():
    with pytest.raises(SuiteError, match="not found"):
        load_suite("nope/missing.yaml")


def test_token_input_needs_tokens_and_dim(write_suite):
    path = write_suite("name: t\npairs:\n  - name: a\n    tokens: 10\n"
                       "    reference: {provider: import, model: 'vitbench.models.torch:SDPA'}\n", "tok.yaml")
    with pytest.raises(SuiteError, match="needs both 'tokens' and 'dim'"):
        expand(load_suite(path), "cpu")


def test_compile_options_take_inductor_options_but_not_with_mode(tmp_path):
    from vitbench.errors import SuiteError
    from vitbench.suite import expand, load_suite

    base = """
name: opts
defaults: {compile: [full], compile_options: %s}
pairs:
  - name: t
    reference: {provider: timm, model: test_vit}
"""
    p = tmp_path / "opts.yaml"
    p.write_text(base % "{options: {cpp_wrapper: true}}")
    (case,) = expand(load_suite(p, check_models=False), "cpu")
    assert case.settings.compile_options.options == {"cpp_wrapper": True}  # handed to torch.compile as options=
    p.write_text(base % "{mode: max-autotune, options: {cpp_wrapper: true}}")
    with pytest.raises(SuiteError, match="opts.yaml.*mode or options"):
        load_suite(p, check_models=False)


def test_a_factorys_checkpoint_filter_fn_is_the_one_its_module_defines(tmp_path, monkeypatch):
    """The import provider looks for checkpoint_filter_fn in the module the suite names (a factory's), not in the
    module of the class the factory returns (here timm's own vision_transformer)."""
    import numpy as np
    import timm

    from vitbench.providers import get_provider

    (tmp_path / "factorymods.py").write_text(
        "import timm\n\n\ndef wrapped(**kw):\n    return timm.create_model('test_vit', **kw)\n\n\n"
        "def checkpoint_filter_fn(state_dict, model):\n"
        "    return {k.removeprefix('inner.'): v for k, v in state_dict.items()}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    provider = get_provider("import")
    model, _ = provider.build("factorymods:wrapped", {}, 32)
    ref = timm.create_model("test_vit", img_size=32)
    state = {f"inner.{k}": v.numpy() for k, v in ref.state_dict().items()}  # names only the filter undoes
    provider.port(model, state)
    assert all(np.array_equal(model.state_dict()[k].numpy(), v.numpy()) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("field,value", [("rounds", 8), ("processes", 4), ("max_steal_pct", 1), ("control", True)])
def test_settings_of_the_whole_pair_are_refused_on_one_side(write_suite, field, value):
    """A pair's sides are timed together: a side's own rounds (or processes, contention limits, control) could
    only be ignored, so validate refuses it, naming the field."""
    s = write_suite(f"""
    name: x
    pairs:
      - name: p
        reference: {{provider: timm, model: test_vit}}
        candidates: [{{provider: timm, model: test_vit, {field}: {value}}}]
    """)
    with pytest.raises(SuiteError, match=rf"pairs\.0\.candidates\.0\.{field}: a pair's sides are timed together"):
        load_suite(s)
