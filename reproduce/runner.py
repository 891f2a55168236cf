"""Run every ``notebooks/NN_*.ipynb`` in order with papermill.

Two paths (``python -m reproduce --help``):

- :func:`fresh_run` (the default, ``make reproduce``): every notebook of the profile into a new
  folder ``results/runs/<profile>-<UTC time>/`` (not committed), then the reproduction check
  (:mod:`reproduce.check`) of its headline tables against the committed ``results/<profile>``,
  which this path never writes. Trained checkpoints are reused only on request (``reuse``).
- :func:`run` into one folder, reusing its unchanged finished notebooks: how maintainers
  regenerate the committed reference (``--update-reference``, ``--force``, ``--only``).

Each notebook gets ``profile``, ``results_dir`` and its profile parameters (only the names its
``parameters`` cell declares). Executed copies go to ``<results_dir>/notebooks/``; the manifest
``<results_dir>/runs.json`` keeps, per notebook, a hash of (notebook content, parameters,
``lib/ctxstyle`` sources, previous notebook's hash) with status and wall time, so a re-run skips
finished notebooks whose inputs (or any upstream notebook) did not change.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .watchdog import StuckKernelError, window_from_env

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
RESULTS_ROOT = REPO / "results"
LIB_DIR = REPO / "lib"
PROFILES_PATH = Path(__file__).with_name("profiles.yaml")
RUNS_DIR = "runs"  # results/runs/<profile>-<UTC time>/: fresh runs (gitignored)
MANIFEST = "runs.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def load_profiles(path: str | Path = PROFILES_PATH) -> dict:
    """The profiles file as ``{name: {"common": {...}, "notebooks": {stem: {...}}}}``."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def resolve_profile(name: str) -> str:
    """``auto`` becomes ``paper`` with a CUDA GPU, else ``cpu``; other names pass through."""
    if name != "auto":
        return name
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def discover_notebooks(folder: str | Path, only: list[str] | None = None) -> list[Path]:
    """``NN_*.ipynb`` in ``folder`` sorted by name; ``only`` keeps stems starting with a prefix."""
    paths = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.stem.startswith(prefix) for prefix in only)]
    return paths


def declared_parameters(notebook: str | Path) -> set[str]:
    """Names assigned in the notebook's ``parameters``-tagged cell (empty if it has none)."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def notebook_parameters(config: dict, stem: str, declared: set[str], profile: str,
                        results_dir: Path) -> tuple[dict, list[str]]:
    """The parameters passed to one notebook, and warnings about overrides it does not declare."""
    overrides = (config.get("notebooks") or {}).get(stem) or {}
    offered = {"profile": profile, "results_dir": str(results_dir),
               **(config.get("common") or {}), **overrides}
    warnings = [f"profile sets {name!r} for {stem} but the notebook does not declare it"
                for name in overrides if name not in declared]
    return {k: v for k, v in offered.items() if k in declared}, warnings


def tree_hash(folder: str | Path) -> str:
    """sha256 over the relative paths and contents of the source files under ``folder``."""
    folder, digest = Path(folder), hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_hash(notebook: Path, parameters: dict, lib_hash: str, upstream: str) -> str:
    """Identity of one notebook run; ``results_dir`` is left out so a moved tree still matches."""
    params = {k: v for k, v in parameters.items() if k != "results_dir"}
    digest = hashlib.sha256(notebook.read_bytes())
    for part in (json.dumps(params, sort_keys=True, default=str), lib_hash, upstream):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


def ensure_kernel(name: str = "python3") -> str:
    """Make kernel ``name`` start the running interpreter; return ``name``.

    A ``python``/``python3`` argv is replaced by ``sys.executable`` by jupyter_client; any other
    interpreter (e.g. a user-wide kernelspec) is shadowed by a kernelspec written to a temporary
    folder put first on ``JUPYTER_PATH``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    generic = {"python", "python3", "python%d.%d" % sys.version_info[:2]}
    try:
        argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
        if argv0 in generic or os.path.abspath(argv0) == os.path.abspath(sys.executable):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import write_kernel_spec

    root = Path(tempfile.mkdtemp(prefix="ctxstyle-jupyter-"))
    write_kernel_spec(root / "kernels" / name)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")]))
    return name


@contextlib.contextmanager
def environment(name: str, value: str):
    """The environment variable ``name`` set to ``value`` inside, as it was (or unset) afterwards."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def kernel_environment(lib_dir: Path):
    """Put ``lib_dir`` first on the kernels' ``PYTHONPATH`` so notebooks import this checkout."""
    return environment("PYTHONPATH", os.pathsep.join(filter(None, [str(lib_dir), os.environ.get("PYTHONPATH")])))


def read_manifest(results_dir: Path) -> dict:
    path = results_dir / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"notebooks": {}}


def write_manifest(results_dir: Path, manifest: dict) -> None:
    from ctxstyle.store import atomic_write

    manifest["updated"] = _now()
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    atomic_write(results_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def last_run_summary(folder: str | Path) -> str | None:
    """``78 min 14 s for 6 notebooks on <machine> (<folder>/runs.json, <date>)``, or None."""
    from .progress import duration

    manifest = read_manifest(Path(folder))
    entries = [e for e in (manifest.get("notebooks") or {}).values() if e.get("status") == "ok"]
    if not entries:
        return None
    from .benchmarks.end_to_end import machine_of

    total = sum(e.get("wall_s") or 0 for e in entries)
    machine = machine_of(Path(folder), manifest) or "machine not recorded"
    return (f"{duration(total)} for {len(entries)} notebooks on {machine} "
            f"({Path(folder) / MANIFEST}, {manifest.get('updated', 'undated')})")


def run(profile: str = "auto", *, force: bool = False, only: list[str] | None = None,
        notebooks_dir: str | Path = NOTEBOOKS_DIR, results_root: str | Path = RESULTS_ROOT,
        results_dir: str | Path | None = None, profiles_path: str | Path = PROFILES_PATH,
        lib_dir: str | Path = LIB_DIR, kernel_name: str = "python3",
        progress: bool | None = None, dry_run: bool = False,
        estimates_dir: str | Path | None = None) -> int:
    """Run the notebooks of one profile into ``results_dir`` (default ``results_root/<profile>``),
    skipping finished notebooks whose inputs did not change (``force`` re-runs them); return 0 on
    success, 1 at the first failure, 2 for a bad profile or selection.

    ``progress`` (default on) prints each cell as it starts, the cells' output and tqdm bars, with
    estimates from the last run in ``estimates_dir`` (default ``results_dir``: its ``runs.json``
    and executed notebooks, read before they are replaced).
    """
    from . import report

    profile = resolve_profile(profile)
    profiles = load_profiles(profiles_path)
    if profile not in profiles:
        print(f"unknown profile {profile!r}; choose from {', '.join(profiles)} or auto", file=sys.stderr)
        return 2
    config = profiles[profile]
    idle_window = window_from_env()  # a bad CTXSTYLE_IDLE_KERNEL_S stops here, before any notebook starts
    results_dir = Path(results_dir or Path(results_root) / profile).resolve()
    lib_dir = Path(lib_dir).resolve()
    all_notebooks = discover_notebooks(notebooks_dir)
    selected = {p.stem for p in discover_notebooks(notebooks_dir, only)}
    print(f"profile {profile}: {len(selected)} of {len(all_notebooks)} notebooks "
          f"from {notebooks_dir} -> {results_dir}")
    if only and not selected:
        print(f"no notebook stem starts with {', '.join(only)}", file=sys.stderr)
        return 2

    if not dry_run:
        (results_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(results_dir)
    entries = manifest.setdefault("notebooks", {})
    for stem in set(entries) - {p.stem for p in all_notebooks}:
        del entries[stem]  # the notebook no longer exists
    manifest.update(profile=profile, lib_hash=tree_hash(lib_dir / "ctxstyle"))
    machine = None  # this machine, described once a notebook runs here (each entry records it)
    progress = True if progress is None else progress
    estimates_dir = Path(estimates_dir or results_dir)
    estimates = read_manifest(estimates_dir).get("notebooks") or {}
    last = last_run_summary(estimates_dir)
    if last and not dry_run:
        print(f"last run of this profile: {last}")
    kernel_name = ensure_kernel(kernel_name)
    started, upstream, status = time.perf_counter(), "", 0

    with kernel_environment(lib_dir):
        for index, nb in enumerate(all_notebooks, 1):
            params, warnings = notebook_parameters(config, nb.stem, declared_parameters(nb),
                                                   profile, results_dir)
            upstream = digest = run_hash(nb, params, manifest["lib_hash"], upstream)
            if nb.stem not in selected:
                continue
            tag = f"[{index}/{len(all_notebooks)}] {nb.stem}"
            for warning in warnings:
                print(f"{tag}: warning: {warning} (not passed)")
            entry = entries.get(nb.stem, {})
            output = results_dir / "notebooks" / nb.name
            if dry_run:
                print(f"{tag}: parameters {json.dumps(params, default=str)}")
                continue
            if not force and entry.get("status") == "ok" and entry.get("hash") == digest and output.is_file():
                print(f"{tag}: unchanged, skipped (last run {_duration(entry.get('wall_s'))})")
                continue
            estimate = (estimates.get(nb.stem) or {}).get("wall_s")
            reporter = None
            if progress:
                from .progress import Reporter, cell_durations

                reporter = Reporter(nb.stem.split("_", 1)[0], notebook_estimate=estimate,
                                    cell_estimates=cell_durations(estimates_dir / "notebooks" / nb.name),
                                    watch_dir=results_dir / "checkpoints")
            print(f"{tag}: start" + (f" (last run {_duration(estimate)})" if estimate else ""), flush=True)
            machine = machine or report.machine_line(report.machine_info())
            entries[nb.stem] = entry = {"hash": digest, "status": "running", "started": _now(),
                                        "parameters": params, "output": f"notebooks/{nb.name}",
                                        "machine": machine}
            write_manifest(results_dir, manifest)
            (results_dir / "records" / f"{nb.stem}.json").unlink(missing_ok=True)
            t0 = time.perf_counter()
            error = _execute(nb, output, params, kernel_name, reporter, idle_window)
            if error and error.startswith(STUCK):  # a lost kernel reply, not the notebook: once more
                print(f"{tag}: {error.splitlines()[0]}; running it once more", file=sys.stderr, flush=True)
                entry["retried_after"] = error.splitlines()[0]
                (results_dir / "records" / f"{nb.stem}.json").unlink(missing_ok=True)
                error = _execute(nb, output, params, kernel_name, reporter, idle_window)
            entry.update(wall_s=round(time.perf_counter() - t0, 2), finished=_now(),
                         status="failed" if error else "ok")
            if error:
                entry["error"] = error.splitlines()[0]
            write_manifest(results_dir, manifest)
            if error:
                print(f"{tag}: FAILED after {entry['wall_s']:.1f} s\n{error}\n"
                      f"executed notebook: {output}", file=sys.stderr, flush=True)
                status = 1
                break
            print(f"{tag}: done in {_duration(entry['wall_s'])}"
                  + (f" (last run {_duration(estimate)})" if estimate else ""), flush=True)

    if dry_run:
        return 0
    manifest["last_invocation_s"] = round(time.perf_counter() - started, 2)
    write_manifest(results_dir, manifest)
    path = report.write_report(results_dir)
    print(f"report: {path} ({'failed' if status else 'ok'}, "
          f"{manifest['last_invocation_s']:.1f} s this run)")
    return status


def fresh_run(profile: str = "auto", *, reuse: bool | str | Path = False, only: list[str] | None = None,
              notebooks_dir: str | Path = NOTEBOOKS_DIR, results_root: str | Path = RESULTS_ROOT,
              profiles_path: str | Path = PROFILES_PATH, lib_dir: str | Path = LIB_DIR,
              kernel_name: str = "python3", progress: bool | None = None, dry_run: bool = False,
              stamp: str | None = None) -> int:
    """Run every (selected) notebook of a profile into a new folder and check it against the reference.

    The run goes to ``results_root/runs/<profile>-<UTC time>/``; the committed reference
    ``results_root/<profile>`` is only read (estimates, check). ``reuse``: True points the run's
    ``checkpoints/`` at the reference's (trained decoders and U-Nets are loaded, not retrained;
    new ones are added there), a path points it at that folder. Returns 0 when every notebook ran
    and the check passed (or there is no reference to check against), 1 when a notebook failed,
    2 for a bad profile or selection, 3 when the check found numbers outside the spread, changed
    verdicts or missing tables.
    """
    from . import check, report

    profile = resolve_profile(profile)
    profiles = load_profiles(profiles_path)
    if profile not in profiles:
        print(f"unknown profile {profile!r}; choose from {', '.join(profiles)} or auto", file=sys.stderr)
        return 2
    if only and not discover_notebooks(notebooks_dir, only):
        print(f"no notebook stem starts with {', '.join(only)}", file=sys.stderr)
        return 2
    reference = Path(results_root).resolve() / profile
    stamp = stamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(results_root).resolve() / RUNS_DIR / f"{profile}-{stamp}"
    print(f"fresh run of profile {profile} into {run_dir}\n"
          f"committed reference (read only{'; --reuse adds new checkpoints to its checkpoints/' if reuse is True else ''}): "
          f"{reference}" + ("" if reference.is_dir() else " (none)"))
    if reuse:
        source = reference / "checkpoints" if reuse is True else Path(reuse).resolve()
        if dry_run:
            print(f"would reuse trained checkpoints from {source}")
        elif source.is_dir():
            run_dir.mkdir(parents=True)
            (run_dir / "checkpoints").symlink_to(source, target_is_directory=True)
            print(f"reusing trained checkpoints: {run_dir / 'checkpoints'} -> {source}")
        else:
            print(f"--reuse: no checkpoints in {source}; everything is trained")
    status = run(profile, force=True, only=only, notebooks_dir=notebooks_dir, results_dir=run_dir,
                 profiles_path=profiles_path, lib_dir=lib_dir, kernel_name=kernel_name, progress=progress,
                 dry_run=dry_run, estimates_dir=reference)
    if dry_run or status:
        if status == 1:
            print("reproduction check skipped: a notebook failed", file=sys.stderr)
        return status
    if not (reference / "tables").is_dir():
        print(f"reproduction check skipped: no committed reference {reference / 'tables'} for profile {profile}")
        return 0
    ran = {p.stem for p in discover_notebooks(notebooks_dir, only)} if only else None  # None: every table
    rows, _, md_path = check.write_check(reference, run_dir, notebooks=ran)
    report.write_report(run_dir)  # now with the check's verdict
    print(check.console_summary(rows, md_path, changed_parameters=check.parameter_differences(reference, run_dir)),
          flush=True)
    return 3 if check.failed(rows) else 0


def _duration(seconds) -> str:
    from .progress import duration

    return duration(seconds)


#: how :func:`_execute` starts the description of a run whose idle kernel was killed (reproduce.watchdog)
STUCK = StuckKernelError.__name__


def _execute(nb: Path, output: Path, params: dict, kernel_name: str, reporter, idle_window: float) -> str | None:
    """Execute one notebook; return None on success or a readable description of the failure."""
    from papermill.exceptions import PapermillExecutionError

    from .progress import execute

    try:
        execute(nb, output, params, kernel_name, str(nb.parent), reporter, idle_window)
    except PapermillExecutionError as exc:
        where = f"cell {exc.cell_index} of the executed notebook (In [{exc.exec_count}])"
        return (f"{where} raised {exc.ename}: {exc.evalue}\n"
                f"---- failing cell source ----\n{exc.source}\n"
                f"---- traceback ----\n" + _ANSI.sub("", "\n".join(exc.traceback)))
    except Exception as exc:  # kernel died, missing kernel, unreadable notebook, ...
        return f"{type(exc).__name__}: {exc}"
    finally:
        _clear_widget_state(output)
    return None


def _clear_widget_state(path: Path) -> None:
    """Drop ipywidgets' saved state (large, useless without a live kernel)."""
    import nbformat

    if not path.is_file():
        return
    nb = nbformat.read(path, as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        nbformat.write(nb, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
