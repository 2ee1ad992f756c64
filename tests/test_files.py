"""Every YAML and JSON file splitsim reads gets the scenario's treatment (issue 7): each defect of each kind
of file is exit code 2 and one line naming the file (and the line or field), with nothing written."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest
import yaml

from helpers import SCENARIOS, TINY_CONFIG, catalog_yaml, error_line
from splitsim.errors import ScenarioError
from splitsim.files import MAX_DEPTH, parse_yaml_text, read_json_file, read_yaml_file
from splitsim.hardware.profile import PROFILE_SCHEMA

BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
DEEP = 1000


def _base() -> dict:
    return yaml.safe_load((SCENARIOS / "h100-nvlink-70b.yaml").read_text()) | {"name": "files"}


# Each kind: the good content of the file, as text, and how a scenario comes to read the file at `path`.
def _good(kind: str) -> str:
    if kind == "scenario":
        return yaml.safe_dump(_base(), sort_keys=False)
    if kind == "cluster":
        return "name: my-box\ngpu: h100-sxm\ngpus_per_node: 8\nintra_node: nvlink4-nvswitch\n"
    if kind == "gpu":
        return yaml.safe_dump(catalog_yaml("gpus", "h100-sxm"), sort_keys=False)
    if kind == "fabric":
        return yaml.safe_dump(catalog_yaml("fabrics", "nvlink4-nvswitch"), sort_keys=False)
    if kind == "profile":
        return yaml.safe_dump({"schema": PROFILE_SCHEMA, "name": "my-fit", "gpu": "h100-sxm",
                               "efficiency": catalog_yaml("gpus", "h100-sxm")["efficiency"],
                               "fitted_on": ["somewhere"]}, sort_keys=False)
    return json.dumps(TINY_CONFIG, indent=2)


def _scenario_reading(kind: str, path: Path, folder: Path) -> Path:
    """A scenario that reads the file at `path` as a `kind` (itself, when kind is "scenario")."""
    if kind == "scenario":
        return path
    data = _base()
    if kind in ("cluster", "gpu", "fabric"):
        cluster = path
        if kind != "cluster":
            cluster = folder / "cluster.yaml"
            key = "gpu" if kind == "gpu" else "intra_node"
            cluster.write_text(_good("cluster").replace(f"{key}: ", f"{key}: {path}  # ", 1))
        data["cluster"] = str(cluster)
    elif kind == "profile":
        data["hardware_profile"] = str(path)
    else:
        data["model"] = str(path)
        data["parallel"] = {"tp": 1}
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(data))
    return scenario


YAML_KINDS = ("scenario", "cluster", "gpu", "fabric", "profile")
KINDS = (*YAML_KINDS, "model")




@pytest.mark.parametrize("kind", KINDS)
def test_the_good_file_of_each_kind_plans(tmp_path, kind):
    from splitsim.scenario import load_scenario
    from splitsim.sim.plan import build_plan

    path = tmp_path / ("config.json" if kind == "model" else f"{kind}.yaml")
    path.write_text(_good(kind))
    assert build_plan(load_scenario(_scenario_reading(kind, path, tmp_path))).pool.kv_cache_tokens > 0


def _defect(kind: str, defect: str, path: Path) -> tuple[Path, list[str]]:
    """Writes `kind` with `defect` at (or near) `path`: the path the scenario names, and what the line says."""
    is_json = kind == "model"
    good = _good(kind)
    lines = good.count("\n") + 1
    match defect:
        case "malformed":
            path.write_text(good[:-1] + ',\n  "oops": }\n' if is_json else good + "extra: [unclosed\n")
            return path, ["malformed JSON" if is_json else "malformed YAML", "line"]
        case "list" | "string" | "null" | "number":
            text = {"list": "[1, 2]", "string": '"a string"', "null": "null", "number": "42"}[defect]
            path.write_text(text)
            return path, ["mapping of fields", f"not {'a ' if defect != 'null' else ''}{defect}"]
        case "duplicate key":
            if is_json:
                path.write_text(good[:-2] + ',\n  "hidden_size": 2048\n}')
                return path, ["duplicate key 'hidden_size'"]
            path.write_text(good + "name: again\n")
            return path, ["duplicate key 'name'", f"line {lines}", "first at line"]
        case "long duplicate key":
            key = "k" * 5000
            path.write_text(good[:-2] + f',\n  "{key}": 1,\n  "{key}": 2\n}}' if is_json
                            else good + f"? {key}\n: 1\n? {key}\n: 2\n")  # a plain key is at most 1,024
            return path, ["duplicate key 'kkkkk", "…"]
        case "alias bomb":  # YAML only: JSON has no aliases
            path.write_text(BOMB)
            return path, ["aliases expand to more than 10,000", "line 5"]
        case "deep nesting":
            path.write_text('{"x": ' + "[" * DEEP + "]" * DEEP + "}" if is_json
                            else "x: " + "[" * DEEP + "]" * DEEP + "\n")
            return path, [f"nested more than {MAX_DEPTH} levels deep"]
        case "non-UTF-8":
            path.write_bytes(good.encode()[:-2] + b'\n, "caf\xe9": 1}' if is_json
                             else good.encode() + b"# caf\xe9\n")
            return path, [f"line {lines}", "byte 0xe9 is not UTF-8"]
        case "folder":  # a model folder is fine when it holds a config.json: this one does not
            path.mkdir()
            return path, ["cannot read", "No such file or directory" if is_json else "Is a directory"]
        case "missing":
            return path, ["cannot read", "No such file or directory"]
        case "over-long name":
            long = path.with_name("x" * 300 + path.suffix)
            return long, ["cannot read", "File name too long", "…"]
    raise AssertionError(defect)


DEFECTS = ("malformed", "list", "string", "null", "number", "duplicate key", "long duplicate key", "alias bomb",
           "deep nesting", "non-UTF-8", "folder", "missing", "over-long name")


CASES = [(kind, defect) for kind in KINDS for defect in DEFECTS if not (kind == "model" and defect == "alias bomb")]


@pytest.mark.parametrize(("kind", "defect"), CASES, ids=[f"{kind}-{defect}" for kind, defect in CASES])
def test_every_defect_of_every_file_is_one_line_and_exit_2(tmp_path, capsys, kind, defect):
    folder = tmp_path / "in"
    folder.mkdir()
    path, expected = _defect(kind, defect, folder / ("config.json" if kind == "model" else f"{kind}.yaml"))
    out = tmp_path / "out"
    err = error_line(capsys, ["run", str(_scenario_reading(kind, path, folder)), "--out", str(out), "-q"])
    assert (str(path) if len(str(path)) <= 120 else str(path)[-50:]) in err  # the file, by name
    for fragment in expected:
        assert fragment in err
    assert len(err) < 400  # nothing printed in full: no long key, path or expanded value
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("kind", KINDS)
def test_an_unreadable_file_says_permission_denied(tmp_path, capsys, kind):
    path = tmp_path / ("config.json" if kind == "model" else f"{kind}.yaml")
    path.write_text(_good(kind))
    path.chmod(0)
    try:
        err = error_line(capsys, ["run", str(_scenario_reading(kind, path, tmp_path)), "-q",
                                   "--out", str(tmp_path / "out")])
    finally:
        path.chmod(0o644)
    assert f"{path}: cannot read the" in err and "Permission denied" in err


CONFIG_FIELDS = [
    ({"hidden_size": "big"}, "hidden_size = 'big': need a whole number greater than 0"),
    ({"num_attention_heads": -8}, "num_attention_heads = -8: need a whole number"),
    ({"num_hidden_layers": 0}, "num_hidden_layers = 0: need a whole number"),
    ({"num_key_value_heads": True}, "num_key_value_heads = True: need a whole number"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3 must divide num_attention_heads=16"),
    ({"head_dim": 0}, "head_dim = 0"),
    ({"max_position_embeddings": 1.5}, "max_position_embeddings = 1.5"),
    ({"vocab_size": "x" * 500}, "vocab_size = 'xxxxxxxx"),
    ({"hidden_size": 8}, "hidden_size = 8 is smaller than num_attention_heads = 16"),
    ({"torch_dtype": ["bfloat16"]}, "torch_dtype = ['bfloat16'] (valid: bfloat16"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings = 'yes': need true or false"),
    ({"architectures": "LlamaForCausalLM"}, "architectures = 'LlamaForCausalLM': need a list"),
    ({"hidden_size": None}, "hidden_size = None"),
]


@pytest.mark.parametrize(("change", "expected"), CONFIG_FIELDS, ids=[str(c[0])[:40] for c in CONFIG_FIELDS])
def test_config_json_fields_are_named_as_hugging_face_names_them(tmp_path, capsys, change, expected):
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_CONFIG | change))
    err = error_line(capsys, ["run", str(_scenario_reading("model", path, tmp_path)), "-q",
                               "--out", str(tmp_path / "out")])
    assert str(path) in err and expected in err
    assert not any(internal in err for internal in ("num_heads", "num_kv_heads", "num_layers", "head_dim_override",
                                                    "validation error", "ModelSpec"))
    assert len(err) < 300
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("[" * DEEP + "]" * DEEP, "nested more than 100 levels deep"),
    ("{a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b: &b [" + ", ".join(["*a"] * 10) + "], c: &c ["
     + ", ".join(["*b"] * 10) + "], d: [" + ", ".join(["*c"] * 10) + "]}", "aliases expand to more than 10,000"),
    ("{ttft: 1, ttft: 2}", "duplicate key 'ttft'"),
    ("[unclosed", "malformed YAML"),
])
def test_set_values_are_read_as_strictly_as_files(tmp_path, capsys, value, expected):
    err = error_line(capsys, ["run", str(SCENARIOS / "h100-nvlink-70b.yaml"), "--set", f"slo={value}", "-q",
                               "--out", str(tmp_path / "out")])
    assert err.startswith("splitsim: error: --set 'slo=") and expected in err and len(err) < 300


def test_yaml_merge_keys_and_small_aliases_still_work():
    text = "base: &b {x: 1, y: 2}\nmid: &m {<<: *b, x: 3}\ntop: {<<: *m, z: 4}\nlist: [*b, *b]\n"
    data = parse_yaml_text(text, "t")
    assert data["top"] == {"x": 3, "y": 2, "z": 4} and data["list"] == [{"x": 1, "y": 2}] * 2
    assert parse_yaml_text("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), "t")  # at the limit


def test_a_recursive_alias_and_a_bad_date_are_one_line(tmp_path):
    with pytest.raises(ScenarioError, match="t: line 1: an alias inside its own anchor"):
        parse_yaml_text("a: &a [*a]", "t")
    with pytest.raises(ScenarioError, match="t: malformed YAML: month must be in 1..12"):
        parse_yaml_text("a: 2024-13-45", "t")
    path = tmp_path / "c.json"
    path.write_text('{"a": NaN}')
    with pytest.raises(ScenarioError, match="NaN is not a JSON number"):
        read_json_file(path, "model config")


def test_every_shipped_preset_still_loads():
    from splitsim.hardware.catalog import load_cluster, load_gpu, preset_names
    from splitsim.models.spec import catalog_names, load_model

    root = Path(str(resources.files("splitsim.hardware") / "catalog"))
    files = sorted(p for p in root.glob("**/*.yaml") if p.parent.name != "profiles")
    assert len(files) == sum(len(preset_names(kind)) for kind in ("gpus", "fabrics", "clusters")) >= 15
    from splitsim.hardware.profile import apply_profile, load_profile

    for path in sorted((root / "profiles").glob("*.yaml")):  # fitted profiles, each for its GPU's cluster
        profile = load_profile(path)
        assert profile.name == path.stem
        node = {"h100-sxm": "h100-nvlink-node", "a100-sxm": "a100-nvlink-node", "l40s": "l40s-pcie-p2p-node"}
        if profile.gpu in node:
            applied = apply_profile(load_cluster(node[profile.gpu]), profile).gpu.efficiency
            assert applied.model_copy(update={"held_out_errors": {}}) == profile.efficiency
            assert applied.held_out_errors["gemm"] == profile.errors["gemm"].median  # the run's error bars
    for path in files:
        assert read_yaml_file(path, "preset")["name"] == path.stem
    for name in preset_names("clusters"):
        assert load_cluster(name).name == name
    for name in preset_names("gpus"):
        assert load_gpu(name).name == name
    for name in preset_names("fabrics"):  # every fabric inside a cluster, where its kind belongs
        data = read_yaml_file(root / "fabrics" / f"{name}.yaml", "fabric")
        key = "inter_node" if data["kind"] in ("infiniband", "ethernet") else "intra_node"
        cluster = {"name": "c", "gpu": "h100-sxm", "gpus_per_node": 8, "num_nodes": 2, key: name,
                   "inter_node": "ib-ndr-rail", "intra_node": "nvlink4-nvswitch"} | {key: name}
        assert getattr(load_cluster(cluster), key).name == name
    models = Path(str(resources.files("splitsim.models") / "catalog"))
    assert len(list(models.glob("*/config.json"))) == len(catalog_names()) >= 3
    for name in catalog_names():
        assert read_json_file(models / name / "config.json", "model config")
        assert load_model(name).name == name
