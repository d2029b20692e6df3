"""Deferred and background imports (node/warmup.py), on a throwaway package so the real modules stay untouched."""

import inspect
import subprocess
import sys
import textwrap

import pytest

from node import warmup


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "warm_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "heavy.py").write_text(textwrap.dedent("""
        def answer():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "warm_pkg.heavy"
    for name in ("warm_pkg.heavy", "warm_pkg"):
        sys.modules.pop(name, None)


def test_a_deferred_module_is_imported_on_first_use_only(package):
    warmup.defer(package)
    import warm_pkg.heavy as heavy  # what `import scipy.optimize` in hivemind does

    assert isinstance(sys.modules[package], warmup._Deferred)
    assert heavy.answer() == 42
    assert not isinstance(sys.modules[package], warmup._Deferred)
    assert sys.modules["warm_pkg"].heavy is sys.modules[package]  # `pkg.heavy.x` now reaches the real one


def test_introspection_does_not_import_it(package):
    warmup.defer(package)
    inspect.getmodule(test_introspection_does_not_import_it)  # reads __file__ of every module in sys.modules
    assert isinstance(sys.modules[package], warmup._Deferred)


def test_background_import_loads_it_and_finish_waits(package):
    warmup.defer(package)
    warmup.import_in_background(package)
    warmup.finish()
    assert sys.modules[package].answer() == 42
    assert not isinstance(sys.modules[package], warmup._Deferred)


def test_defer_leaves_an_imported_module_alone(package):
    import warm_pkg.heavy  # noqa: F401

    real = sys.modules[package]
    warmup.defer(package)
    assert sys.modules[package] is real


def test_hivemind_runs_its_load_balancing_with_scipy_deferred():
    import node.swarm  # noqa: F401  (defers scipy.optimize before hivemind imports it, unless already imported)
    from hivemind.averaging.load_balancing import load_balance_peers

    assert sum(load_balance_peers(1000, [1.0, 2.0, None], 16)) == 1000


def test_the_daemon_imports_without_scipy_optimize():
    """Whatever module of the daemon imports hivemind first (node/access.py does), scipy.optimize stays deferred."""
    found = subprocess.run([sys.executable, "-c", "import sys, node.daemon; print(type(sys.modules['scipy.optimize']).__name__)"],
                           capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert found.stdout.strip() == "_Deferred"
