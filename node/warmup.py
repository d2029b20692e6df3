"""Start-up imports off the critical path of a join.

Two imports cost seconds before the first optimizer step without being needed for it yet:
- `scipy.optimize` (~1 s): hivemind imports it at start-up, but only its load balancing inside an averaging
  round calls it. `defer()` puts a stand-in in its place that imports the real module on first use (in each
  averager process: during its first round), and `load_deferred_in_background()` imports it in this process
  after the first step.
- `torch._dynamo` (~2 s): every torch optimizer imports it when it is built. `import_in_background()` starts
  that import while the node waits on the network (DHT boot, reachability check, registration).
"""

import importlib
import logging
import sys
import threading
import types

logger = logging.getLogger(__name__)

HIVEMIND_DEFERRABLE = ("scipy.optimize",)
_lock = threading.RLock()
_threads: list[threading.Thread] = []


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute is read, then imports the real one and hands that over."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # introspection (inspect.getmodule reads every module's __file__)
            raise AttributeError(attribute)
        return getattr(load(self.__name__), attribute)


def defer(name: str) -> None:
    """Make `import name` cheap until something uses the module. No effect once it is imported."""
    with _lock:
        if name in sys.modules:
            return
        parent_name, _, child = name.rpartition(".")
        stand_in = _Deferred(name)
        sys.modules[name] = stand_in
        if parent_name:
            setattr(importlib.import_module(parent_name), child, stand_in)


def load(name: str) -> types.ModuleType:
    """The real module, imported now if only its stand-in was there."""
    if not isinstance(sys.modules.get(name), _Deferred):
        return importlib.import_module(name)
    with _lock:  # the first user imports it; others wait for that
        stand_in = sys.modules.get(name)
        if not isinstance(stand_in, _Deferred):
            return importlib.import_module(name)
        del sys.modules[name]
        try:
            return importlib.import_module(name)  # also rebinds the parent package's attribute
        except BaseException:
            sys.modules[name] = stand_in  # try again on the next use
            raise


def import_in_background(*names: str) -> threading.Thread:
    def run() -> None:
        for name in names:
            try:
                load(name)
            except Exception as e:  # the foreground import will raise it where it matters
                logger.debug("Background import of %s failed: %s", name, e)

    thread = threading.Thread(target=run, name="hearth-warmup", daemon=True)
    thread.start()
    _threads.append(thread)
    return thread


def finish() -> None:
    """Wait for background imports. Call it before forking: a child that inherits a half-done import can hang
    on that module's lock forever."""
    while _threads:
        _threads.pop().join()


def defer_hivemind_extras() -> None:
    """Call before the first hivemind import (any `from hivemind...` imports all of hivemind)."""
    for name in HIVEMIND_DEFERRABLE:
        defer(name)


def load_deferred_in_background() -> threading.Thread:
    return import_in_background(*HIVEMIND_DEFERRABLE)


def warm_up() -> None:
    """Import now what a join would import on its critical path: for a node process that waits for joins."""
    for name in ("torch._dynamo", *HIVEMIND_DEFERRABLE):
        load(name)
