"""Per-step metrics: console, JSONL, TensorBoard where installed; loss-curve plots."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class MetricsLogger:
    """Rank 0 writes `<dir>/metrics.jsonl` (appending across resumes) and prints a line every
    `interval` steps; other ranks do nothing."""

    def __init__(self, log_dir: str | os.PathLike, *, enabled: bool, interval: int = 1,
                 jsonl: bool = True, tensorboard: bool = False):
        self.enabled, self.interval = enabled, max(1, interval)
        self.dir = Path(log_dir)
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            path = self.dir / "metrics.jsonl"
            torn = path.is_file() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
            self._file = open(path, "a", buffering=1)
            if torn:  # a run killed mid-write: keep our first record off its partial line
                self._file.write("\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                print("metrics: tensorboard is not installed; logging to JSONL only")

    def log(self, record: dict, force: bool = False) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        if self._file:
            self._file.write(json.dumps(record) + "\n")
        if self._tb:
            step = record.get("global_step", record.get("step", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "global_step", "time"):
                    self._tb.add_scalar(k, v, step)
        if force or record.get("step", 0) % self.interval == 0:
            print(format_record(record), flush=True)

    def event(self, message: str, **fields) -> None:
        """Something that happened (resume, blend change, skipped batch): printed and recorded."""
        if not self.enabled:
            return
        print(message, flush=True)
        if self._file:
            self._file.write(json.dumps({"time": round(time.time(), 3), "event": message, **fields}) + "\n")

    def close(self):
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()


def format_record(r: dict) -> str:
    parts = [f"{r.get('phase', '')} step {r.get('step')}/{r.get('steps', '?')}"]
    tflops_fmt = "{:.1f} TFLOP/s" if (r.get("tflops") or 0) >= 0.1 else "{:.3f} TFLOP/s"
    for key, fmt in (("loss", "loss {:.4f}"), ("valid_loss", "validation loss {:.4f}"), ("lr", "lr {:.3e}"), ("grad_norm", "gnorm {:.3f}"),
                     ("tokens_per_s", "{:,.0f} tok/s"), ("tflops", tflops_fmt),
                     ("mfu", "MFU {:.1%}"), ("mem_gib", "mem {:.1f} GiB"), ("eta_s", "ETA {}")):
        if r.get(key) is not None:
            v = r[key]
            parts.append(fmt.format(_hms(v) if key == "eta_s" else v))
    if r.get("skipped"):
        parts.append("SKIPPED (non-finite)")
    return " | ".join(parts)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_records(paths) -> list[dict]:
    """Every record of the JSONL files; a line that does not decode (a run killed mid-write) is
    skipped, with one warning per file naming its lines."""
    rows = []
    for p in paths:
        bad = []
        with open(p, errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(n)
                    continue
                if isinstance(r, dict):
                    rows.append(r)
                else:
                    bad.append(n)
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            print(f"warning: {p}:{shown}: skipped {len(bad)} line(s) that are not JSON records "
                  "(a run killed mid-write?)", file=sys.stderr, flush=True)
    return rows



def plot_loss(metrics_files, out_png: str | os.PathLike) -> Path:
    """Loss against global step, one colour per phase; a resumed step overwrites the earlier one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(metrics_files)
    rows = [r for r in records if "loss" in r]
    if not rows:
        from .config import ConfigError
        raise ConfigError("no loss records", file=", ".join(map(str, metrics_files)),
                          fix="give the metrics.jsonl (or log folder) of a run that trained at least one step")
    by_phase: dict[str, dict[int, float]] = {}
    valid: dict[str, dict[int, float]] = {}
    for r in rows:
        by_phase.setdefault(r.get("phase", "?"), {})[r["global_step"]] = r["loss"]
    for r in records:
        if "valid_loss" in r:
            valid.setdefault(r.get("phase", "?"), {})[r["global_step"]] = r["valid_loss"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for phase, pts in by_phase.items():
        xs = sorted(pts)
        line, = ax.plot(xs, [pts[x] for x in xs], label=phase)
        if phase in valid:  # the held-out loss, in the phase's colour
            vx = sorted(valid[phase])
            ax.plot(vx, [valid[phase][x] for x in vx], "o--", color=line.get_color(), markersize=4,
                    label=f"{phase} validation")
    ax.set_xlabel("step (all phases)")
    ax.set_ylabel("loss")
    ax.set_title("loss across phases")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)


def save_figure(fig, out_png: str | os.PathLike, *, dpi: int = 120, bbox_inches: str | None = "tight") -> Path:
    """Writes a matplotlib figure as a PNG atomically (under store.py's temporary name, which
    data-prep cleans up after a kill) and closes it."""
    import matplotlib.pyplot as plt
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
    plt.close(fig)
    os.replace(tmp, out)
    return out
