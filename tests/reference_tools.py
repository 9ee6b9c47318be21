"""The evaluation tools' own code, loaded as references for the tests. scripts/setup.sh installs
evalplus and bigcodebench without their dependencies (they declare model providers, `datasets`,
vllm, ...): their data modules cannot be imported, so modules that import them are loaded from
their files with those imports stubbed."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _unused(*args, **kwargs):
    raise AssertionError("a stubbed data-loading function of the reference tool was called")


_STUBS = {
    "evalplus": {"evalplus.data": ("get_human_eval_plus", "get_mbpp_plus", "load_solutions",
                                   "write_directory", "write_jsonl")},
    "bigcodebench": {"bigcodebench.data": ("get_bigcodebench", "get_bigcodebench_hash", "load_solutions",
                                           "write_directory", "write_jsonl"),
                     "pqdm": (), "pqdm.processes": ("pqdm",)},
}


def tool_module(package: str, relative: str):
    """`package`'s file `relative` (e.g. "sanitize.py") as a private module, or a skip."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} (pip install --no-deps {package}) is the reference here")
    saved = {name: sys.modules.get(name) for name in _STUBS[package]}
    try:
        for name, attrs in _STUBS[package].items():
            sys.modules[name] = types.SimpleNamespace(**{a: _unused for a in attrs})
        path = Path(spec.submodule_search_locations[0]) / relative
        name = f"_reference_{package}_{relative.replace('/', '_').removesuffix('.py')}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def tool_sanitize(package: str):
    """evalplus's or bigcodebench's own tree-sitter `sanitize(code, entrypoint)`."""
    pytest.importorskip("tree_sitter", reason="tree-sitter is needed by the reference sanitizers")
    pytest.importorskip("tree_sitter_python", reason="tree-sitter-python is needed by the reference")
    return tool_module(package, "sanitize.py").sanitize
