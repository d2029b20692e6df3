"""What the volunteer sees while the node runs: a live rich table on a terminal, one log line per epoch elsewhere."""

import logging
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from node.accounting import traffic_summary
from node.reporter import ReporterStats
from node.trainer import TrainingStats

logger = logging.getLogger(__name__)


def render(swarm: str, device: str, training: TrainingStats, reporting: ReporterStats) -> Table:
    table = Table(title=f"Hearth node · swarm {swarm}", show_header=False, min_width=48)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("state", training.state)
    table.add_row("epoch", str(training.epoch))
    table.add_row("peers in last round", str(training.last_group_size or "-"))
    table.add_row("samples/s", f"{training.samples_per_second:,.0f}")
    table.add_row("samples contributed", f"{training.samples_total:,}")
    table.add_row("averaging traffic", traffic_summary(training.bytes_sent, training.bytes_received, training.samples_total))
    table.add_row("last epoch loss", "-" if training.last_loss is None else f"{training.last_loss:.4f}")
    table.add_row("device", device)
    broker = "connected" if reporting.connected else f"offline ({reporting.last_error or 'connecting'})"
    table.add_row("broker", broker)
    table.add_row("reports sent / in the ledger", f"{reporting.reports_sent} / {reporting.reports_acknowledged}")
    table.add_row("reports waiting for a receipt", str(reporting.reports_waiting))
    return table


class LiveView:
    """Context manager; `mode` is 'live' (rich table), 'log' (a line per epoch) or 'quiet'."""

    def __init__(self, mode: str, renderable: Callable[[], Table], console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.mode = mode if (mode != "live" or self.console.is_terminal) else "log"
        self._live = Live(get_renderable=renderable, console=self.console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "LiveView":
        if self.mode == "live":
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.mode == "live":
            self._live.__exit__(*exc)

    def epoch_done(self, epoch: int, group_size: int, samples: int, loss: float | None) -> None:
        if self.mode == "log":
            loss_text = "-" if loss is None else f"{loss:.4f}"
            self.console.print(f"epoch {epoch} done: averaged with {group_size} peer(s), {samples} samples, loss {loss_text}")
