"""Find tasks by name through the `hearth.tasks` entry point group, so third-party packages can add tasks."""

from importlib.metadata import entry_points

from hearth.tasks.base import Task

GROUP = "hearth.tasks"


class UnknownTask(LookupError):
    pass


def _builtin() -> dict[str, str]:
    # Built-ins also resolve from a source checkout that was never pip-installed.
    return {"spirals": "hearth.tasks.spirals:SpiralsTask", "tabular": "hearth.tasks.tabular:TabularTask",
            "housing": "hearth.tasks.housing:HousingTask", "digits": "hearth.tasks.digits:DigitsTask",
            "tiny-lm": "hearth.tasks.tiny_lm:TinyLMTask", "lm-finetune": "hearth.tasks.finetune:FinetuneLMTask"}


def available_tasks() -> list[str]:
    names = set(_builtin()) | {ep.name for ep in entry_points(group=GROUP)}
    return sorted(names)


def load_task(name: str) -> Task:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()()
    target = _builtin().get(name)
    if target is None:
        raise UnknownTask(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    module_name, class_name = target.split(":")
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)()
