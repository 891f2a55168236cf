"""Progress of a running notebook, one line at a time, for a person watching the runner.

:class:`Reporter` turns what the kernel sends while a notebook executes into short lines:

- each code cell as it starts (the parameters cells are not counted): ``03 cell 6/14 · <section
  heading> · <first code line> · last run 16 min 12 s · notebook 11 s so far of ~35 min 55 s last
  run`` (the estimates come from the last run's executed notebook and ``runs.json``);
- the cell's printed output (stdout and stderr), line by line;
- tqdm progress bars inside a cell: in a kernel ``tqdm.auto`` draws ipywidgets, whose text the
  reporter reads from the widget messages and prints at most every ``bar_every_s`` seconds (and
  when a bar completes);
- a heartbeat when nothing was printed for ``heartbeat_s`` seconds: how long the cell has run, how
  long it took last time and, from the run's ``checkpoints/`` folder (``watch_dir``), how many
  training folders the cell has written to and which one last (the notebooks train most decoders
  without a progress bar; their checkpoints are the trace they leave).

:func:`execute` runs one notebook with papermill through :class:`ProgressEngine`, an nbclient
engine that hands every kernel message and cell start to a reporter. Its kernels are started with
``--IPKernelApp.log_level=ERROR``: the kernel application's own logger otherwise prints, for every
notebook, that the kernel "is running over TCP without encryption" (the kernel listens on
localhost only).
"""

from __future__ import annotations

import html
import re
import sys
import threading
import time
from pathlib import Path

#: extra kernel arguments: the kernel application's logger at ERROR (no per-kernel TCP warning)
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)
_FIGURE_SPACE = "\u2007"  # tqdm.notebook pads with figure spaces
_MODEL = re.compile(r"^IPY_MODEL_(\w+)$")
_BAR_DONE = re.compile(r"(\d+)/(\d+)\b")


def duration(seconds) -> str:
    """``12.3 s``, ``16 min 12 s`` or ``1 h 5 min``."""
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def cell_durations(executed_notebook: str | Path) -> dict[str, float]:
    """``{cell source: seconds}`` from a notebook papermill executed before (empty if none)."""
    import json

    path = Path(executed_notebook)
    if not path.is_file():
        return {}
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for cell in nb.get("cells", []):
        seconds = ((cell.get("metadata") or {}).get("papermill") or {}).get("duration")
        if cell.get("cell_type") == "code" and seconds is not None:
            source = cell.get("source", "")
            out["".join(source) if isinstance(source, list) else source] = float(seconds)
    return out


def _is_parameters(cell) -> bool:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return "parameters" in tags or "injected-parameters" in tags


def checkpoint_activity(folder: str | Path | None, since_epoch: float, now_epoch: float | None = None) -> str | None:
    """``checkpoints written in this cell: 3 folders, latest ours-a15be42c13b2 40 s ago`` from the
    files under ``folder/*/`` modified at or after ``since_epoch`` (None when there are none)."""
    if folder is None or not Path(folder).is_dir():
        return None
    latest: dict[str, float] = {}
    for path in Path(folder).glob("*/*"):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime >= since_epoch:
            latest[path.parent.name] = max(mtime, latest.get(path.parent.name, 0.0))
    if not latest:
        return None
    name = max(latest, key=latest.get)
    age = (time.time() if now_epoch is None else now_epoch) - latest[name]
    return (f"checkpoints written in this cell: {len(latest)} folder{'s' if len(latest) > 1 else ''}, "
            f"latest {name} {duration(max(age, 0.0))} ago")


def _heading(source: str) -> str | None:
    for line in source.splitlines():
        if line.lstrip().startswith("#"):
            return line.lstrip("# ").strip()
    return None


def _first_code_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    return ""


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class Reporter:
    """Prints the progress of one notebook; see the module docstring. Thread-safe."""

    def __init__(self, tag: str, *, cell_estimates: dict[str, float] | None = None,
                 notebook_estimate: float | None = None, out=None, clock=time.monotonic,
                 heartbeat_s: float = 60.0, bar_every_s: float = 15.0, watch_dir: str | Path | None = None):
        self.tag = tag
        self.watch_dir = watch_dir
        self.cell_estimates = cell_estimates or {}
        self.notebook_estimate = notebook_estimate
        self._out = out
        self._clock = clock
        self.heartbeat_s = heartbeat_s
        self.bar_every_s = bar_every_s
        self._lock = threading.Lock()
        self._cells: list = []
        self._code_index: dict[int, int] = {}
        self._section = None
        self._cell = None  # (code number, source) of the running code cell
        self._started = self._cell_started = self._last_line = clock()
        self._cell_started_epoch = time.time()
        self._widgets: dict[str, str] = {}  # comm id -> last text value
        self._boxes: dict[str, list[str]] = {}  # comm id of a child -> the children of its box
        self._bar_printed: dict[tuple, float] = {}
        self._bar_done: set[tuple] = set()
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ output
    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self._out or sys.stdout, flush=True)
            self._last_line = self._clock()

    # ------------------------------------------------------------------ notebook and cells
    def begin(self, cells) -> None:
        """The notebook's cells (dicts or nbformat nodes), in order."""
        self._cells = list(cells)
        codes = [i for i, c in enumerate(self._cells) if c.get("cell_type") == "code" and not _is_parameters(c)]
        self._code_index = {i: n for n, i in enumerate(codes, 1)}
        self._started = self._last_line = self._clock()
        self._cell = None  # a run again (the runner's retry): no cell of the last one is running

    def cell_start(self, index: int) -> None:
        cell = self._cells[index] if 0 <= index < len(self._cells) else {}
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "markdown":
            self._section = _heading(source) or self._section
            return
        if cell.get("cell_type") != "code":
            return
        if _is_parameters(cell):
            return  # assignments only: instant, and not counted
        number = self._code_index.get(index, 0)
        self._cell, self._cell_started = (number, source), self._clock()
        self._cell_started_epoch = time.time()
        parts = [f"{self.tag} cell {number}/{len(self._code_index)}"]
        if self._section:
            parts.append(_short(self._section, 50))
        first = _first_code_line(source)
        if first:
            parts.append(_short(first, 50))
        last = self.cell_estimates.get(source)
        if last is not None:
            parts.append(f"last run {duration(last)}")
        so_far = f"notebook {duration(self._clock() - self._started)} so far"
        if self.notebook_estimate:
            so_far += f" of ~{duration(self.notebook_estimate)} last run"
        parts.append(so_far)
        self._print("    " + " · ".join(parts))

    # ------------------------------------------------------------------ kernel messages
    def message(self, msg: dict) -> None:
        """One iopub message from the kernel."""
        kind = msg.get("msg_type") or (msg.get("header") or {}).get("msg_type")
        content = msg.get("content") or {}
        if kind == "stream":
            self._stream(content.get("text", ""))
        elif kind in ("comm_open", "comm_msg"):
            data = content.get("data") or {}
            state = data.get("state") or {}
            if state:
                self._widget(content.get("comm_id", ""), state)

    def _stream(self, text: str) -> None:
        for line in text.split("\n"):  # not splitlines: a "\r" redraws its line, the last drawing counts
            line = line.rstrip("\r").rsplit("\r", 1)[-1].rstrip()
            if line.strip():
                self._print(f"    {self.tag} | {line}")

    def _widget(self, comm_id: str, state: dict) -> None:
        children = state.get("children")
        if isinstance(children, list):
            ids = [m.group(1) for m in (_MODEL.match(str(c)) for c in children) if m]
            for child in ids:
                self._boxes[child] = ids
        value = state.get("value")
        if isinstance(value, str):
            self._widgets[comm_id] = html.unescape(value).replace(_FIGURE_SPACE, " ").strip()
            box = self._boxes.get(comm_id)
            if box and comm_id == box[-1]:  # tqdm updates the left text, then the right one
                self._bar(tuple(box))

    def _bar(self, box: tuple) -> None:
        text = " ".join(t for t in (self._widgets.get(c, "") for c in box) if t)
        done = _BAR_DONE.search(text)
        finished = done.group(0) if done and done.group(1) == done.group(2) else None
        now = self._clock()
        if not text or (box, finished) in self._bar_done:
            return  # tqdm redraws a finished bar when it closes: one line is enough
        if not finished and now - self._bar_printed.get(box, -1e18) < self.bar_every_s:
            return
        self._bar_printed[box] = now
        if finished:
            self._bar_done.add((box, finished))
        self._print(f"    {self.tag} | {text}")

    # ------------------------------------------------------------------ heartbeat
    def tick(self) -> None:
        """Print a heartbeat if nothing was printed for ``heartbeat_s`` seconds."""
        now = self._clock()
        if self._cell is None or now - self._last_line < self.heartbeat_s:
            return
        number, source = self._cell
        line = (f"    {self.tag} cell {number}/{len(self._code_index)} still running: "
                f"{duration(now - self._cell_started)}")
        last = self.cell_estimates.get(source)
        if last is not None:
            line += f" (last run {duration(last)})"
        activity = checkpoint_activity(self.watch_dir, self._cell_started_epoch)
        if activity:
            line += f"; {activity}"
        self._print(line)

    def __enter__(self):
        self._stop = threading.Event()  # a fresh one: a reporter may be entered again (the runner's retry)

        def beat():
            while not self._stop.wait(min(5.0, self.heartbeat_s)):
                self.tick()

        self._thread = threading.Thread(target=beat, name=f"progress-{self.tag}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return False


def _engine_class():
    """:class:`ProgressEngine`, built on papermill's nbclient engine (imported lazily)."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    from .watchdog import IdleKernelWatchdog, StuckKernelError, kernel_info_answered

    class ProgressClient(PapermillNotebookClient):
        def __init__(self, nb_man, reporter=None, **kw):
            super().__init__(nb_man, **kw)
            self._progress_reporter = reporter

        def process_message(self, msg, cell, cell_index):
            if self._progress_reporter is not None:
                self._progress_reporter.message(msg)
            return super().process_message(msg, cell, cell_index)

    class ProgressEngine(NBClientEngine):
        """papermill's nbclient engine, with a :class:`Reporter` fed every cell start and message."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None,
                                     reporter=None, idle_window_s=0.0, **kwargs):
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(
                safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                startup_timeout=start_timeout, kernel_name=kernel_name, log=logger, log_output=log_output,
                stdout_file=stdout_file, stderr_file=stderr_file)
            if reporter is not None:
                reporter.begin(nb_man.nb.cells)
                original = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    reporter.cell_start(cell_index)
                    return original(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            client = ProgressClient(nb_man, reporter=reporter, **final_kwargs)

            def kernel_pid():  # None until the kernel runs and after it has ended
                km = getattr(client, "km", None)
                if km is None or not getattr(km, "has_kernel", False):
                    return None
                return getattr(getattr(km, "provisioner", None), "pid", None)

            def nudge():  # a new connection asks the kernel for kernel_info (ipykernel issue 1554)
                return kernel_info_answered(client.km.get_connection_info())

            with IdleKernelWatchdog(kernel_pid, idle_window_s, nudge=nudge) as watchdog:
                try:
                    return client.execute()
                except Exception as exc:
                    if watchdog.fired:
                        answered = "answered" if watchdog.nudge_answered else "not answered"
                        raise StuckKernelError(
                            f"the kernel and its processes used no CPU for {idle_window_s:g} s while a cell was "
                            f"running (a request it never answered; reproduce/watchdog.py), nor in the "
                            f"{watchdog.grace_s:g} s after a new connection's kernel_info request ({answered}), "
                            f"so it was killed") from exc
                    raise

    return ProgressEngine


ENGINE_NAME = "ctxstyle-progress"


def register_engine() -> str:
    """Register :class:`ProgressEngine` with papermill (once); return its name."""
    from papermill.engines import papermill_engines

    if ENGINE_NAME not in papermill_engines._engines:
        papermill_engines.register(ENGINE_NAME, _engine_class())
    return ENGINE_NAME


def execute(notebook: Path, output: Path, parameters: dict, kernel_name: str, cwd: str,
            reporter: Reporter | None, idle_window_s: float = 0.0) -> None:
    """papermill.execute_notebook with the progress engine and a quiet kernel; raises as papermill does,
    and :class:`reproduce.watchdog.StuckKernelError` when the kernel sat idle ``idle_window_s`` seconds
    with a cell running (0: no guard; the runner passes ``watchdog.window_from_env()``)."""
    import papermill

    kwargs = dict(parameters=parameters, kernel_name=kernel_name, progress_bar=False, cwd=cwd,
                  engine_name=register_engine(), extra_arguments=list(KERNEL_ARGUMENTS),
                  idle_window_s=float(idle_window_s))
    if reporter is None:
        papermill.execute_notebook(str(notebook), str(output), **kwargs)
        return
    with reporter:
        papermill.execute_notebook(str(notebook), str(output), reporter=reporter, **kwargs)
