"""`autotelic report`: one self-contained HTML page per run, group of seeds or bench.

RUN_DIR/report.html needs nothing but a browser: plots are PNG data URIs drawn with matplotlib's
Agg backend (a bare `matplotlib.figure.Figure`, no pyplot state), styles and the small episode
player are inline, and nothing is fetched from the network. Sections:

* **Learning curves** (`data-plot="learning-curves"`): extrinsic episode return and success rate
  against env steps, one line per seed (updates in which no episode ended are left out).
* **Intrinsic rewards** (`intrinsic-rewards`, with reward sources): each source's raw reward and
  the reward its value head learns from (normalized), mean over seeds.
* **Credit over training** (`credit-over-training`): per update, each head's exact share
  `coef_k * mean A_k` of the mean policy advantage, the relative spread `|coef_k| std A_k`, and
  `coef_k` times the mean return target of its value head (`autotelic.explain.credit`).
* **Evaluation** (when `autotelic explain` wrote RUN_DIR/explain/): state visits per grid cell
  (`visitation`), where each intrinsic source dominated the advantage (`dominance-map`), each
  recorded episode's per-step credit (`episode-credit`) and observation Shapley values
  (`observation-shapley`), and a frame-by-frame player (`episode-frame`, `saliency-occlusion`,
  `saliency-gradient`) showing the per-step attributions of the chosen action.
* **Feedback** (only when RUN_DIR/feedback/top_captions.json exists): the most frequent captions
  with their labels. Expected content: a JSON list of objects
  `{"caption": str, "label": any JSON value, "count": int}`, most frequent first.

Every plot element carries `data-plot="<name>"` and a unique `id`. A bench directory
(results.json) gets a page with the results table, its learning-curve images and links to one
report per configuration (`write_bench_report`).

A language-model run directory (config.yaml with `kind: lm`, written by `autotelic lm-train` and
`autotelic lm-pretrain`) gets its own page (`build_lm_report`). lm-train: the run summary, the
collapse monitor's verdict in a sentence, the training reward and each weighted part
(`lm-rewards`), held-out accuracy, sample accuracy and vote agreement (`lm-accuracy`), token
entropy, completion length, KL and loss (`lm-policy`), the monitor's peak-accuracy, collapse and
agreement-saturation steps as vertical lines on each, and the completions kept in samples.jsonl.
lm-pretrain: its summary and the loss and held-out accuracy curves (`lm-pretrain-curves`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UserError
from . import credit as credit_lib
from .evaluate import EXPLAIN_DIR, read_explain

REPORT_NAME = "report.html"
FEEDBACK_CAPTIONS = Path("feedback") / "top_captions.json"
REPORT_EPISODES = 3  # episodes of each seed embedded in the page (all are in explain/)
FEEDBACK_ROWS = 50
DPI = 96
HEAD_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


# ------------------------------------------------------------------------------------ loading


class RunData:
    """What the report reads from one run directory (one seed)."""

    def __init__(self, run_dir: Path) -> None:
        from .. import runs

        self.run_dir = run_dir
        self.config = _read_yaml(run_dir / "config.yaml")
        try:
            self.heads = credit_lib.head_settings(self.config)
        except UserError as error:
            raise UserError(
                f"{str(run_dir)!r}: its config.yaml cannot be read by autotelic {__version__} "
                f"({error})."
            ) from None
        metrics = run_dir / "metrics.csv"
        try:
            self.rows = runs.read_metrics(run_dir) if metrics.exists() else []
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{str(metrics)!r} is damaged ({error}).") from None
        summary = run_dir / "summary.json"
        self.summary = _read_json(summary) if summary.exists() else None
        self.explain = read_explain(run_dir)
        seeds = self.config.get("seeds") or []
        self.seed = seeds[0] if len(seeds) == 1 else None

    @property
    def label(self) -> str:
        return f"seed {self.seed}" if self.seed is not None else self.run_dir.name


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{str(path.parent)!r} is an incomplete run directory: config.yaml is missing."
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{str(path)!r} is unreadable ({error}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} does not hold a run config.")
    return data


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{str(path)!r} is unreadable ({error}).") from None


def run_data(run_dir: Path) -> tuple[list[RunData], dict[str, Any]]:
    """The seeds of a run or group directory and the group's (or run's) config."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run directory {str(run_dir)!r} does not exist.")
    if not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} is not a directory; pass a run directory.")
    group = run_dir / "group.json"
    if group.exists():
        data = _read_json(group)
        try:
            dirs = [run_dir / str(name) for name in data["runs"]]
            config = dict(data["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{str(group)!r} is damaged ({error}).") from None
        seeds = [RunData(d) for d in dirs if (d / "config.yaml").exists()]
        if not seeds:
            raise UserError(f"{str(run_dir)!r} is incomplete: none of its seed directories exist.")
    elif (run_dir / "config.yaml").exists():
        seeds = [RunData(run_dir)]
        config = seeds[0].config
    else:
        raise UserError(
            f"{str(run_dir)!r} holds no autotelic run (no config.yaml, group.json or "
            "results.json); pass the directory that `autotelic train --out` or "
            "`autotelic bench --out` wrote."
        )
    if not any(seed.rows for seed in seeds):
        raise UserError(
            f"{str(run_dir)!r} is incomplete: no update has been logged to metrics.csv yet."
        )
    return seeds, config


# ------------------------------------------------------------------------------------ figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_uri(frame: np.ndarray) -> str:
    from matplotlib import image

    buffer = io.BytesIO()
    image.imsave(buffer, np.asarray(frame, dtype=np.uint8), format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plot(name: str, uri: str, alt: str, suffix: str = "", attrs: str = "") -> str:
    return (
        f'<img class="plot" id="plot-{name}{suffix}" data-plot="{name}" src="{uri}" '
        f'alt="{html.escape(alt)}"{attrs}>'
    )


def _colour(k: int) -> str:
    return HEAD_COLOURS[k % len(HEAD_COLOURS)]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points, ignoring NaN."""
    if window <= 1 or len(values) == 0:
        return values
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    sums = np.concatenate([[0.0], sums])
    counts = np.concatenate([[0], counts])
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    total, number = sums[index] - sums[start], counts[index] - counts[start]
    return np.divide(total, number, out=np.full(len(values), np.nan), where=number > 0)


def _column(rows: list[dict[str, float]], key: str) -> np.ndarray:
    return np.asarray([row.get(key, math.nan) for row in rows], dtype=np.float64)


def learning_curves_plot(seeds: list[RunData]) -> str:
    figure = _figure(9.0, 3.4)
    returns_axes, success_axes = figure.subplots(1, 2)
    for index, seed in enumerate(seeds):
        if not seed.rows:
            continue
        steps = _column(seed.rows, "env_steps")
        ended = _column(seed.rows, "episodes") > 0
        window = max(1, len(steps) // 40)
        colour = _colour(index)
        for axes, key in ((returns_axes, "episode_return_mean"), (success_axes, "success_rate")):
            values = np.where(ended, _column(seed.rows, key), np.nan)
            axes.plot(steps[ended], values[ended], color=colour, alpha=0.3, linewidth=0.8)
            axes.plot(steps, _smooth(values, window), color=colour, label=seed.label)
    returns_axes.set_title("extrinsic episode return")
    success_axes.set_title("success rate")
    success_axes.set_ylim(-0.05, 1.05)
    for axes in (returns_axes, success_axes):
        axes.set_xlabel("env steps")
        axes.grid(alpha=0.3)
    if len(seeds) > 1:
        returns_axes.legend(fontsize="small")
    return _png(figure)


def _seed_mean(seeds: list[RunData], key: str) -> tuple[np.ndarray, np.ndarray]:
    """env_steps and the mean over seeds of a metrics column, on the shared update grid."""
    usable = [s for s in seeds if s.rows]
    length = min(len(s.rows) for s in usable)
    steps = _column(usable[0].rows[:length], "env_steps")
    values = np.stack([_column(s.rows[:length], key) for s in usable])
    return steps, np.nanmean(values, axis=0) if values.size else values


def intrinsic_rewards_plot(seeds: list[RunData], heads: credit_lib.HeadSettings) -> str:
    figure = _figure(9.0, 3.4)
    raw_axes, used_axes = figure.subplots(1, 2)
    for k in range(1, heads.num_heads):
        name = heads.names[k]
        for axes, key in ((raw_axes, "reward_raw"), (used_axes, "reward")):
            steps, values = _seed_mean(seeds, f"{name}/{key}")
            axes.plot(steps, values, color=_colour(k), label=name)
    raw_axes.set_title("intrinsic reward, raw (mean per step)")
    used_axes.set_title("intrinsic reward as learned (normalized)")
    for axes in (raw_axes, used_axes):
        axes.set_xlabel("env steps")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _png(figure)


def training_credit(seeds: list[RunData], heads: credit_lib.HeadSettings) -> Any:
    """Per-seed `TrainingCredit`, averaged over seeds on the shared update grid."""
    usable = [s for s in seeds if s.rows]
    length = min(len(s.rows) for s in usable)
    per_seed = [credit_lib.training_credit(s.rows[:length], heads) for s in usable]
    first = per_seed[0]

    def mean(field: str) -> np.ndarray:
        return np.mean([getattr(c, field) for c in per_seed], axis=0)

    scale = mean("scale")
    totals = scale.sum(axis=-1, keepdims=True)
    return credit_lib.TrainingCredit(
        names=heads.names,
        update=first.update,
        env_steps=first.env_steps,
        mean_shares=mean("mean_shares"),
        mean_advantage=mean("mean_advantage"),
        scale=scale,
        scale_shares=np.divide(scale, totals, out=np.zeros_like(scale), where=totals > 0),
        value_shares=mean("value_shares"),
        dominant=credit_lib.dominant(scale),
    )


def credit_over_training_plot(history: Any) -> str:
    figure = _figure(10.0, 3.4)
    mean_axes, scale_axes, value_axes = figure.subplots(1, 3)
    steps = history.env_steps
    for k, name in enumerate(history.names):
        mean_axes.plot(steps, history.mean_shares[:, k], color=_colour(k), label=name)
        value_axes.plot(steps, history.value_shares[:, k], color=_colour(k), label=name)
    mean_axes.plot(steps, history.mean_advantage, color="black", linewidth=0.8, label="total")
    scale_axes.stackplot(
        steps,
        history.scale_shares.T,
        colors=[_colour(k) for k in range(len(history.names))],
        labels=list(history.names),
    )
    mean_axes.set_title("coef x mean advantage (sums to total)", fontsize="medium")
    scale_axes.set_title("share of |coef| x std advantage", fontsize="medium")
    scale_axes.set_ylim(0, 1)
    value_axes.set_title("coef x mean return target", fontsize="medium")
    for axes in (mean_axes, scale_axes, value_axes):
        axes.set_xlabel("env steps")
        axes.grid(alpha=0.3)
    mean_axes.legend(fontsize="small")
    return _png(figure)


def visitation_plot(visitation: dict[str, Any]) -> str:
    counts = np.asarray(visitation["counts"], dtype=np.float64)
    figure = _figure(3.6, 3.4)
    axes = figure.subplots()
    shown = axes.imshow(counts, cmap="viridis", interpolation="nearest")
    figure.colorbar(shown, ax=axes, shrink=0.8, label="visits")
    if counts.size <= 400:
        for (row, col), value in np.ndenumerate(counts):
            if value > 0:
                bright = value > counts.max() * 0.6
                axes.text(
                    col, row, f"{int(value)}", ha="center", va="center", fontsize=6,
                    color="black" if bright else "white",
                )  # fmt: skip
    axes.set_title("state visits (agent cell)")
    axes.set_xticks([])
    axes.set_yticks([])
    return _png(figure)


def dominance_map_plot(visitation: dict[str, Any], names: Sequence[str]) -> str:
    counts = np.asarray(visitation["counts"], dtype=np.float64)
    by_head = np.asarray(visitation["dominant_counts"], dtype=np.float64)
    sources = list(range(1, len(names)))
    figure = _figure(3.4 * len(sources) + 0.6, 3.4)
    axes_list = np.atleast_1d(figure.subplots(1, len(sources)))
    shown = None
    for axes, k in zip(axes_list, sources, strict=True):
        fraction = np.divide(by_head[k], counts, out=np.full_like(counts, np.nan), where=counts > 0)
        shown = axes.imshow(fraction, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes.set_title(f"{names[k]} dominated", fontsize="medium")
        axes.set_xticks([])
        axes.set_yticks([])
    figure.colorbar(shown, ax=list(axes_list), shrink=0.8, label="fraction of visits")
    return _png(figure)


def episode_credit_plot(arrays: dict[str, np.ndarray], names: Sequence[str]) -> tuple[str, dict]:
    """Per-step advantage shares (stacked bars) and value shares; returns the PNG and where its
    step axis lies in the image (for the player's cursor)."""
    shares = arrays["advantage_shares"]
    steps = np.arange(len(shares))
    figure = _figure(9.0, 4.2)
    advantage_axes, value_axes = figure.subplots(2, 1, sharex=True)
    positive = np.zeros(len(steps))
    negative = np.zeros(len(steps))
    for k, name in enumerate(names):
        part = shares[:, k]
        bottom = np.where(part >= 0, positive, negative)
        # Stacked as steps (one polygon per head, not one bar per step: far quicker to draw).
        advantage_axes.fill_between(
            steps, bottom, bottom + part, step="mid", color=_colour(k), linewidth=0, label=name
        )
        positive += np.maximum(part, 0)
        negative += np.minimum(part, 0)
        value_axes.plot(steps, arrays["value_shares"][:, k], color=_colour(k), label=name)
    advantage_axes.plot(steps, arrays["advantage_total"], color="black", linewidth=1.0, label="A")
    value_axes.plot(steps, arrays["value_total"], color="black", linewidth=1.0, label="V")
    advantage_axes.set_ylabel("coef x A")
    value_axes.set_ylabel("coef x V")
    value_axes.set_xlabel("step")
    advantage_axes.legend(fontsize="small", ncol=len(names) + 1)
    for axes in (advantage_axes, value_axes):
        axes.grid(alpha=0.3)
        axes.set_xlim(-0.5, max(len(steps) - 0.5, 0.5))
    uri = _png(figure)  # drawing lays the figure out, so the axes' position is final after it
    return uri, _axis_box(value_axes)


def _axis_box(axes: Any) -> dict[str, float]:
    """Where the x axis of `axes` lies, as fractions of the image width, and its limits."""
    box = axes.get_position()
    low, high = axes.get_xlim()
    return {"left": box.x0, "right": box.x1, "xmin": low, "xmax": high}


def observation_shapley_plot(
    arrays: dict[str, np.ndarray], players: Sequence[str], sampled: bool
) -> str:
    values = arrays["obs_shapley"]
    steps = np.arange(len(values))
    many = values.shape[1] > 10
    figure = _figure(9.0, 3.0)
    line_axes, bar_axes = figure.subplots(1, 2, width_ratios=[3, 1])
    mean_abs = np.abs(values).mean(axis=0) if len(values) else np.zeros(values.shape[1])
    # With few players each keeps its colour in every episode; with many, the 10 largest are
    # drawn, coloured by rank.
    shown = np.argsort(-mean_abs)[:10] if many else np.arange(values.shape[1])
    colours = [_colour(rank if many else p) for rank, p in enumerate(shown)]
    for colour, p in zip(colours, shown, strict=True):
        line_axes.plot(steps, values[:, p], color=colour, label=players[p])
        if sampled:
            line_axes.fill_between(
                steps,
                arrays["obs_shapley_ci_low"][:, p],
                arrays["obs_shapley_ci_high"][:, p],
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
    line_axes.set_title(
        "Shapley value of pi(a_t|s_t) per player" + (" (95% CI)" if sampled else ""),
        fontsize="medium",
    )
    line_axes.set_xlabel("step")
    line_axes.grid(alpha=0.3)
    line_axes.legend(fontsize="small", ncol=2)
    bar_axes.barh([players[p] for p in shown][::-1], mean_abs[shown][::-1], color=colours[::-1])
    bar_axes.set_title("mean |value|", fontsize="medium")
    return _png(figure)


# ------------------------------------------------------------------------------------ html


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: 0.3em; }
img.plot { display: block; max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; }
.cursor-box { position: relative; display: inline-block; max-width: 100%; }
.cursor { position: absolute; top: 0; bottom: 0; width: 2px; background: rgba(220,0,0,0.6);
          pointer-events: none; display: none; }
.viewer { border: 1px solid #ccc; padding: 0.8em; border-radius: 6px; margin: 1em 0; }
.viewer .panels { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.viewer .panel { text-align: center; font-size: 0.85em; }
.viewer img.frame { image-rendering: pixelated; width: 240px; height: auto; }
.viewer canvas { image-rendering: pixelated; width: 240px; border: 1px solid #ddd; }
.viewer .controls { margin: 0.5em 0; display: flex; gap: 0.5em; align-items: center;
                    flex-wrap: wrap; }
.viewer input[type=range] { width: 320px; }
.bar { display: inline-block; height: 0.7em; vertical-align: middle; }
"""

JS = """
(function () {
  "use strict";
  function heat(value, scale) {
    var x = scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
    var a = Math.abs(x);
    if (x >= 0) { return "rgba(214,39,40," + a.toFixed(3) + ")"; }
    return "rgba(31,119,180," + a.toFixed(3) + ")";
  }
  function drawMap(canvas, map, scale) {
    var rows = map.length, cols = rows ? map[0].length : 0, cell = 12;
    canvas.width = Math.max(1, cols * cell); canvas.height = Math.max(1, rows * cell);
    var g = canvas.getContext("2d");
    g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) {
        g.fillStyle = heat(map[r][c], scale); g.fillRect(c * cell, r * cell, cell, cell);
      }
    }
  }
  function fmt(x) { return (x === null || x === undefined) ? "n/a" : Number(x).toPrecision(3); }
  function cell(row, text, colour, width) {
    var td = document.createElement("td");
    if (colour) {
      var bar = document.createElement("span"); bar.className = "bar";
      bar.style.background = colour; bar.style.width = Math.round(width) + "px";
      td.appendChild(bar); td.appendChild(document.createTextNode(" "));
    }
    td.appendChild(document.createTextNode(text)); row.appendChild(td);
  }
  function setup(root) {
    var data = JSON.parse(document.getElementById(root.getAttribute("data-source")).textContent);
    var select = root.querySelector("select.episode");
    var slider = root.querySelector("input.step");
    var label = root.querySelector(".step-label");
    var frame = root.querySelector("img.frame");
    var occlusion = root.querySelector("canvas.occlusion");
    var gradient = root.querySelector("canvas.gradient");
    var table = root.querySelector("tbody.attributions");
    var playing = null;
    function episode() { return data.episodes[Number(select.value)]; }
    function moveCursors(ep, t) {
      var boxes = document.querySelectorAll(".cursor[data-viewer='" + root.id + "']");
      for (var i = 0; i < boxes.length; i++) { boxes[i].style.display = "none"; }
      var cursor = document.getElementById(ep.cursor_id);
      if (!cursor || !ep.axis) { return; }
      var span = ep.axis.xmax - ep.axis.xmin;
      var x = ep.axis.left + (t - ep.axis.xmin) / span * (ep.axis.right - ep.axis.left);
      cursor.style.left = (100 * x).toFixed(2) + "%"; cursor.style.display = "block";
    }
    function show() {
      var ep = episode(), t = Number(slider.value);
      label.textContent = "step " + t + " / " + (ep.steps - 1);
      if (frame && ep.frames.length) {
        frame.src = ep.frames[Math.min(t, ep.frames.length - 1)];
      }
      if (occlusion && ep.occlusion) { drawMap(occlusion, ep.occlusion[t], ep.occlusion_scale); }
      if (gradient && ep.gradient) { drawMap(gradient, ep.gradient[t], ep.gradient_scale); }
      while (table.firstChild) { table.removeChild(table.firstChild); }
      var rows = [];
      var action = ep.action[t];
      rows.push(["chosen action", data.actions[action] + " (pi = " + fmt(ep.prob[t]) + ")"]);
      rows.push(["advantage (policy)", fmt(ep.advantage_total[t])]);
      for (var k = 0; k < data.heads.length; k++) {
        rows.push(["  share of " + data.heads[k], fmt(ep.advantage_shares[t][k]),
                   data.colours[k], 60 * Math.abs(ep.advantage_shares[t][k]) / ep.share_scale]);
      }
      rows.push(["dominant source", data.heads[ep.dominant[t]]]);
      rows.push(["value (weighted)", fmt(ep.value_total[t])]);
      for (k = 0; k < data.heads.length; k++) {
        rows.push(["  share of " + data.heads[k], fmt(ep.value_shares[t][k])]);
      }
      for (k = 0; k < data.heads.length; k++) {
        rows.push(["reward " + data.heads[k] + " (raw)", fmt(ep.rewards_raw[t][k])]);
      }
      if (ep.source_shapley) {
        for (k = 0; k < data.heads.length; k++) {
          rows.push(["Shapley " + data.heads[k] + " (advantage)", fmt(ep.source_shapley[t][k])]);
        }
      }
      for (var p = 0; p < data.players.length; p++) {
        var text = fmt(ep.obs_shapley[t][p]);
        if (ep.obs_shapley_se) { text += " +/- " + fmt(1.96 * ep.obs_shapley_se[t][p]); }
        rows.push(["Shapley of pi: " + data.players[p], text]);
      }
      if (ep.position) { rows.push(["agent cell (row, col)", ep.position[t].join(", ")]); }
      if (ep.observation) { rows.push(["observation", ep.observation[t].map(fmt).join(", ")]); }
      for (var i = 0; i < rows.length; i++) {
        var tr = document.createElement("tr");
        cell(tr, rows[i][0]); cell(tr, rows[i][1], rows[i][2], rows[i][3] || 0);
        table.appendChild(tr);
      }
      moveCursors(ep, t);
    }
    function chooseEpisode() {
      slider.max = String(episode().steps - 1); slider.value = "0"; show();
    }
    function stepBy(delta) {
      var t = Number(slider.value) + delta;
      slider.value = String(Math.max(0, Math.min(Number(slider.max), t))); show();
    }
    select.addEventListener("change", chooseEpisode);
    slider.addEventListener("input", show);
    root.querySelector("button.prev").addEventListener("click", function () { stepBy(-1); });
    root.querySelector("button.next").addEventListener("click", function () { stepBy(1); });
    root.querySelector("button.play").addEventListener("click", function (event) {
      if (playing) {
        clearInterval(playing); playing = null; event.target.textContent = "play"; return;
      }
      event.target.textContent = "pause";
      playing = setInterval(function () {
        if (Number(slider.value) >= Number(slider.max)) { slider.value = "0"; show(); }
        else { stepBy(1); }
      }, 250);
    });
    chooseEpisode();
  }
  var viewers = document.querySelectorAll(".viewer");
  for (var i = 0; i < viewers.length; i++) { setup(viewers[i]); }
})();
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{CSS}</style>",
            "</head><body>",
            *body,
            f"<script>{JS}</script>",
            "</body></html>",
        ]
    )


def _json_script(element_id: str, data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], attrs: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _rounded(values: Any, digits: int = 4) -> Any:
    """Nested lists of floats with `digits` significant digits (NaN and inf become None)."""
    array = np.asarray(values, dtype=np.float64)
    flat = [
        float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in array.reshape(-1).tolist()
    ]
    if array.ndim == 0:
        return flat[0]
    return np.asarray(flat, dtype=object).reshape(array.shape).tolist()


def _scale(values: Any) -> float:
    array = np.abs(np.asarray(values, dtype=np.float64))
    peak = float(np.nanmax(array)) if array.size else 0.0
    return peak if math.isfinite(peak) and peak > 0 else 1.0


def _overview(seeds: list[RunData], config: dict[str, Any]) -> str:
    rewards = ", ".join(config.get("rewards") or []) or "none (extrinsic only)"
    heads = seeds[0].heads
    items = [
        ("environment", config.get("env")),
        ("intrinsic rewards", rewards),
        ("seeds", ", ".join(str(s.seed) for s in seeds)),
        ("env steps per seed", config.get("steps")),
        (
            "coefficients",
            ", ".join(f"{n} {c:g}" for n, c in zip(heads.names, heads.coefs, strict=True)),
        ),
    ]
    rows = [(k, "" if v is None else v) for k, v in items]
    summaries = [s for s in seeds if s.summary]
    if summaries:
        summary_rows = [
            (
                s.label,
                _fmt(s.summary.get("final_return")),
                _fmt(s.summary.get("success_rate"), 2),
                s.summary.get("env_steps"),
                _fmt(s.summary.get("wall_seconds"), 1),
            )
            for s in summaries
        ]
        summary_table = _table(
            ["run", "final return", "success rate", "env steps", "wall s"], summary_rows
        )
    else:
        summary_table = '<p class="note">No summary.json yet: the run has not finished.</p>'
    return _table(["", ""], rows) + summary_table


def _feedback_section(run_dir: Path, seeds: list[RunData]) -> str:
    candidates = [run_dir / FEEDBACK_CAPTIONS] + [s.run_dir / FEEDBACK_CAPTIONS for s in seeds]
    found = [path for path in dict.fromkeys(candidates) if path.exists()]
    if not found:
        return ""
    parts = ['<section id="feedback" data-section="feedback"><h2>Feedback</h2>']
    for path in found:
        where = path.parent.parent.name
        try:
            captions = json.loads(path.read_text())
            if not isinstance(captions, list):
                raise ValueError("expected a list of {caption, label, count}")
            rows = [
                (
                    str(item.get("caption", "")),
                    json.dumps(item.get("label")),
                    item.get("count", ""),
                )
                for item in captions[:FEEDBACK_ROWS]
                if isinstance(item, dict)
            ]
        except (OSError, ValueError) as error:
            parts.append(
                f'<p class="note">{html.escape(str(path))} is unreadable: '
                f"{html.escape(str(error))}</p>"
            )
            continue
        parts.append(f"<h3>Top captions ({html.escape(where)})</h3>")
        parts.append(
            _table(["caption", "label", "count"], rows, ' class="captions" data-table="captions"')
        )
    parts.append("</section>")
    return "\n".join(parts)


def _evaluation_section(seed: RunData, suffix: str) -> str:
    if seed.explain is None:
        return (
            f'<p class="note">No evaluation data for {html.escape(seed.label)}: run '
            f"<code>autotelic explain {html.escape(str(seed.run_dir))}</code>.</p>"
        )
    summary, episodes = seed.explain
    names = summary["heads"]["names"]
    players = summary["observation_shapley"]["player_names"]
    sampled = summary["observation_shapley"]["method"] != "exact"
    parts = [
        f"<h3>{html.escape(seed.label)}: checkpoint of update {summary['update']} "
        f"({_fmt(summary.get('env_steps'))} env steps)</h3>",
        f'<p class="note">{html.escape(summary["policy"])}; evaluation seed '
        f"{summary['eval_seed']}, {summary['recorded_steps']} steps of {summary['num_envs']} envs "
        f"recorded. Files: {html.escape(str(seed.run_dir / EXPLAIN_DIR))}.</p>",
    ]
    for note in summary.get("notes", []):
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    episode_rows = [
        (
            meta["index"],
            meta["length"],
            _fmt(meta["return"]),
            "yes" if meta["success"] else "no",
            ", ".join(f"{n} {meta['dominance'][n]:.2f}" for n in names),
        )
        for meta in summary["episodes"]
    ]
    parts.append(
        _table(["episode", "steps", "return", "success", "steps dominated by"], episode_rows)
    )
    fractions = summary["dominance"]["fractions"]
    parts.append(
        '<p class="note">Over every recorded step, the largest |share| of the advantage came from '
        + ", ".join(f"{html.escape(n)} {fractions[n]:.0%}" for n in names)
        + " of the time.</p>"
    )
    if len(names) > 1:
        rows = [
            (meta["index"], *(_fmt(meta["return_shapley"]["values"][n]) for n in names))
            for meta in summary["episodes"]
        ]
        parts.append(
            "<p>Shapley values over reward sources of each episode's coefficient-weighted "
            "discounted return (an additive game, so each source's value is its own term):</p>"
        )
        parts.append(_table(["episode", *names], rows))
    visitation = summary.get("visitation", {})
    if visitation.get("available"):
        plots = [_plot("visitation", visitation_plot(visitation), "state visits", suffix)]
        if len(names) > 1:
            plots.append(
                _plot(
                    "dominance-map",
                    dominance_map_plot(visitation, names),
                    "where each source dominated",
                    suffix,
                )
            )
        parts.append('<div class="panels" style="display:flex;flex-wrap:wrap;gap:1em">')
        parts.extend(plots)
        parts.append("</div>")
    else:
        parts.append(
            f'<p class="note">No visitation map: {html.escape(visitation.get("reason", ""))}.</p>'
        )

    viewer_id = f"viewer{suffix}"
    viewer_data: dict[str, Any] = {
        "heads": names,
        "colours": [_colour(k) for k in range(len(names))],
        "actions": summary["action_names"],
        "players": players,
        "episodes": [],
    }
    embedded = list(zip(summary["episodes"], episodes, strict=True))[:REPORT_EPISODES]
    for meta, arrays in embedded:
        index = meta["index"]
        tag = f"{suffix}-ep{index}"
        uri, axis = episode_credit_plot(arrays, names)
        cursor_id = f"cursor{tag}"
        parts.append(
            f"<h4>Episode {index}: {meta['length']} steps, return {_fmt(meta['return'])}"
            f"{' (cut to ' + str(meta['explained_steps']) + ' steps)' if meta['cut'] else ''}</h4>"
        )
        parts.append(
            f'<div class="cursor-box">{_plot("episode-credit", uri, "per-step credit", tag)}'
            f'<div class="cursor" id="{cursor_id}" data-viewer="{viewer_id}"></div></div>'
        )
        parts.append(
            _plot(
                "observation-shapley",
                observation_shapley_plot(arrays, players, sampled),
                "observation Shapley values",
                tag,
            )
        )
        episode: dict[str, Any] = {
            "title": f"episode {index} ({meta['length']} steps)",
            "steps": len(arrays["action"]),
            "frames": [_image_uri(f) for f in arrays["frames"]] if "frames" in arrays else [],
            "action": arrays["action"].astype(int).tolist(),
            "prob": _rounded(arrays["probs"][np.arange(len(arrays["action"])), arrays["action"]]),
            "advantage_total": _rounded(arrays["advantage_total"]),
            "advantage_shares": _rounded(arrays["advantage_shares"]),
            "share_scale": _scale(arrays["advantage_shares"]),
            "value_total": _rounded(arrays["value_total"]),
            "value_shares": _rounded(arrays["value_shares"]),
            "rewards_raw": _rounded(arrays["rewards_raw"]),
            "dominant": arrays["dominant"].astype(int).tolist(),
            "obs_shapley": _rounded(arrays["obs_shapley"]),
            "obs_shapley_se": _rounded(arrays["obs_shapley_se"]) if sampled else None,
            "source_shapley": _rounded(arrays["source_shapley"])
            if "source_shapley" in arrays
            else None,
            "position": arrays["position"].astype(int).tolist() if "position" in arrays else None,
            "observation": _rounded(arrays["obs"].reshape(len(arrays["obs"]), -1))
            if "frames" not in arrays and arrays["obs"][0].size <= 32
            else None,
            "cursor_id": cursor_id,
            "axis": axis,
        }
        for key in ("occlusion", "gradient"):
            if f"saliency_{key}" in arrays:
                maps = arrays[f"saliency_{key}"]
                episode[key] = _rounded(maps, 3)
                episode[f"{key}_scale"] = _scale(maps)
        viewer_data["episodes"].append(episode)

    first = viewer_data["episodes"][0] if viewer_data["episodes"] else None
    if first is None:
        return "\n".join(parts)
    options = "".join(
        f'<option value="{i}">{html.escape(e["title"])}</option>'
        for i, e in enumerate(viewer_data["episodes"])
    )
    panels = []
    if first["frames"]:
        panels.append(
            f'<div class="panel"><img class="frame" id="frame{suffix}" data-plot="episode-frame" '
            f'src="{first["frames"][0]}" alt="episode frame"><br>frame</div>'
        )
    occlusion_note = "occlusion: drop in log pi(a|s) (red supports the action)"
    for key, caption in (("occlusion", occlusion_note), ("gradient", "|gradient of log pi(a|s)|")):
        if first.get(key) is not None:
            panels.append(
                f'<div class="panel"><canvas class="{key}" id="saliency-{key}{suffix}" '
                f'data-plot="saliency-{key}" width="60" height="60"></canvas><br>'
                f"{html.escape(caption)}</div>"
            )
    saliency_note = summary.get("saliency", {}).get("skipped")
    parts.append(
        f'<div class="viewer" id="{viewer_id}" data-source="{viewer_id}-data">'
        f'<div class="controls"><select class="episode">{options}</select>'
        '<button class="prev" type="button">&lt;</button>'
        '<button class="play" type="button">play</button>'
        '<button class="next" type="button">&gt;</button>'
        '<input class="step" type="range" min="0" max="0" value="0">'
        '<span class="step-label"></span></div>'
        f'<div class="panels">{"".join(panels)}'
        '<div class="panel"><table><tbody class="attributions"></tbody></table></div></div>'
        + (
            f'<p class="note">Saliency skipped: {html.escape(saliency_note)}.</p>'
            if saliency_note
            else ""
        )
        + "</div>"
    )
    parts.append(_json_script(f"{viewer_id}-data", viewer_data))
    return "\n".join(parts)


def build_report(run_dir: Path) -> str:
    """The HTML of the report of a run or group directory (or of a language-model run)."""
    run_dir = Path(run_dir)
    kind = lm_run_kind(run_dir)
    if kind is not None:
        return build_lm_report(run_dir, kind)
    seeds, config = run_data(run_dir)
    heads = seeds[0].heads
    usable = [s for s in seeds if s.rows]
    title = (
        f"autotelic report: {config.get('env', '')} [{', '.join(heads.names[1:]) or 'extrinsic'}]"
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(str(run_dir.resolve()))}; written by autotelic '
        f"{__version__}.</p>",
        _overview(seeds, config),
        '<h2 id="learning">Learning curves</h2>',
        _plot("learning-curves", learning_curves_plot(seeds), "learning curves"),
    ]
    if heads.num_heads > 1:
        body += [
            '<h2 id="intrinsic">Intrinsic rewards</h2>',
            _plot("intrinsic-rewards", intrinsic_rewards_plot(usable, heads), "intrinsic rewards"),
        ]
    history = training_credit(usable, heads)
    dominance = history.dominance()
    body += [
        '<h2 id="credit">Credit over training</h2>',
        '<p class="note">Each value head\'s share of the policy advantage '
        "<code>A = sum_k coef_k A_k</code> (exact: the mean shares add up to the mean advantage), "
        "how far each head moves the advantage from step to step, and what each value head "
        f"learns. Mean over {len(usable)} seed(s). The largest spread came from "
        + ", ".join(f"{html.escape(n)} in {f:.0%}" for n, f in dominance.items())
        + " of the updates.</p>",
        _plot("credit-over-training", credit_over_training_plot(history), "credit over training"),
        '<h2 id="evaluation">Evaluation</h2>',
    ]
    for index, seed in enumerate(seeds):
        suffix = f"-seed{seed.seed}" if seed.seed is not None else f"-run{index}"
        body.append(_evaluation_section(seed, suffix))
    feedback = _feedback_section(run_dir, seeds)
    if feedback:
        body.append(feedback)
    return _page(title, body)


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html (atomically) for a run or group directory; a bench directory
    (results.json) gets `write_bench_report`. Returns the path. UserError for a directory that
    is missing or holds no run."""
    from ..runs import atomic_write_text

    run_dir = Path(run_dir)
    if run_dir.is_dir() and (run_dir / "results.json").exists():
        return write_bench_report(run_dir)
    text = build_report(run_dir)
    path = run_dir / REPORT_NAME
    atomic_write_text(path, text)
    return path


# ------------------------------------------------------------------------------------ lm runs

LM_COMMANDS = ("lm-train", "lm-pretrain")
LM_SAMPLES = "samples.jsonl"
LM_SAMPLE_STEPS = 2  # the first and the last step recorded in samples.jsonl
LM_MARKERS = (
    ("peak_accuracy_step", "peak accuracy", "#2ca02c", "--"),
    ("collapse_step", "collapse", "#d62728", "-"),
    ("agreement_saturation_step", "agreement saturated", "#9467bd", ":"),
)


def lm_run_kind(run_dir: Path) -> str | None:
    """ "lm-train" or "lm-pretrain" for a language-model run directory, else None.

    The marker is config.yaml's `kind: lm` with its `command`; directories written before the
    marker existed are recognized by summary.json's `command` or by their config's fields."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir() or not config_path.exists():
        return None
    config = _read_yaml(config_path)
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else {}
    command = config.get("command") or (summary or {}).get("command")
    if config.get("kind") == "lm" or command in LM_COMMANDS:
        if command in LM_COMMANDS:
            return command
        return "lm-train" if "group_size" in config else "lm-pretrain"
    if {"group_size", "prompts_per_step", "rewards"} <= set(config):
        return "lm-train"
    if {"judge_fraction", "batch_size", "d_model"} <= set(config):
        return "lm-pretrain"
    return None


def _lm_rows(run_dir: Path) -> list[dict[str, float]]:
    from .. import runs

    path = run_dir / "metrics.csv"
    try:
        rows = runs.read_metrics(run_dir) if path.exists() else []
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{str(path)!r} is damaged ({error}).") from None
    if not rows:
        raise UserError(
            f"{str(run_dir)!r} is incomplete: no step has been logged to metrics.csv yet."
        )
    return rows


def _lm_samples(run_dir: Path) -> list[dict[str, Any]]:
    """samples.jsonl's rows (unreadable lines are skipped: the page is still worth having)."""
    path = run_dir / LM_SAMPLES
    if not path.exists():
        return []
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "completion" in row:
            rows.append(row)
    return rows


def _lm_markers(axes: Any, summary: dict[str, Any]) -> None:
    for key, label, colour, style in LM_MARKERS:
        step = summary.get(key)
        if isinstance(step, int | float) and not isinstance(step, bool):
            axes.axvline(step, color=colour, linestyle=style, linewidth=1.2, label=label)


def _lm_curve(axes: Any, steps: np.ndarray, values: np.ndarray, **style: Any) -> bool:
    """Plot the finite points of a column (markers when they are sparse); False if none."""
    finite = np.isfinite(values)
    if not finite.any():
        return False
    sparse = finite.sum() < len(values) or finite.sum() <= 3
    axes.plot(steps[finite], values[finite], marker="o" if sparse else None, markersize=4, **style)
    return True


def lm_rewards_plot(rows: list[dict[str, float]], summary: dict[str, Any]) -> str:
    steps = _column(rows, "update")
    parts = sorted(k for k in rows[0] if k.startswith("reward/"))
    figure = _figure(9.0, 3.4)
    axes = figure.subplots()
    _lm_curve(axes, steps, _column(rows, "reward"), color="black", label="reward (weighted sum)")
    if len(parts) > 1:
        for k, key in enumerate(parts):
            _lm_curve(axes, steps, _column(rows, key), color=_colour(k), label=key, alpha=0.8)
    _lm_markers(axes, summary)
    axes.set_title("training reward (mean over the step's completions)")
    axes.set_xlabel("GRPO step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def lm_accuracy_plot(rows: list[dict[str, float]], summary: dict[str, Any]) -> str:
    steps = _column(rows, "update")
    figure = _figure(9.0, 3.4)
    axes = figure.subplots()
    initial = summary.get("initial_accuracy")
    eval_steps, eval_values = steps, _column(rows, "eval_accuracy")
    if isinstance(initial, int | float):
        eval_steps = np.concatenate([[0.0], steps])
        eval_values = np.concatenate([[float(initial)], eval_values])
    drawn = _lm_curve(axes, eval_steps, eval_values, color="#1f77b4", label="held-out accuracy")
    drawn |= _lm_curve(
        axes, steps, _column(rows, "sample_accuracy"), color="#ff7f0e", alpha=0.7,
        label="sample accuracy (training completions)",
    )  # fmt: skip
    drawn |= _lm_curve(
        axes, steps, _column(rows, "vote_agreement"), color="#7f7f7f", alpha=0.7,
        label="vote agreement (label-free)",
    )  # fmt: skip
    _lm_markers(axes, summary)
    if not drawn:
        axes.text(0.5, 0.5, "no labels: no accuracy", ha="center", transform=axes.transAxes)
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("true accuracy against the group's agreement")
    axes.set_xlabel("GRPO step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def lm_policy_plot(rows: list[dict[str, float]], summary: dict[str, Any]) -> str:
    steps = _column(rows, "update")
    panels = (
        ("entropy", "token entropy (nats)"),
        ("completion_tokens", "completion length (tokens)"),
        ("kl", "KL to the start policy"),
        ("loss", "loss"),
    )
    figure = _figure(11.0, 2.8)
    for axes, (key, title) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        if not _lm_curve(axes, steps, _column(rows, key), color="black"):
            axes.text(0.5, 0.5, "not logged", ha="center", transform=axes.transAxes)
        _lm_markers(axes, summary)
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel("GRPO step")
        axes.grid(alpha=0.3)
    return _png(figure)


def lm_pretrain_plot(rows: list[dict[str, float]]) -> str:
    steps = _column(rows, "update")
    figure = _figure(9.0, 3.4)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    _lm_curve(loss_axes, steps, _column(rows, "loss"), color="black")
    if not _lm_curve(accuracy_axes, steps, _column(rows, "eval_accuracy"), color="#1f77b4"):
        accuracy_axes.text(
            0.5, 0.5, "not evaluated yet", ha="center", transform=accuracy_axes.transAxes
        )
    loss_axes.set_title("supervised loss")
    accuracy_axes.set_title("held-out accuracy")
    accuracy_axes.set_ylim(-0.05, 1.05)
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    return _png(figure)


def _lm_collapse_sentence(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "No summary.json yet: the collapse monitor reports when the run completes."
    if "peak_accuracy_step" not in summary:
        return "This run has no collapse monitor result."
    peak = summary.get("peak_accuracy_step")
    if peak is None:
        return (
            "No held-out accuracy was measured (the tasks have no answers), so the collapse "
            "monitor had nothing to compare the reward with."
        )
    smoothed = summary.get("peak_accuracy_smoothed")
    window = summary.get("collapse_window", "?")
    text = (
        f"Held-out accuracy (running mean over {window} evaluations) peaked at step {peak}"
        + (f" ({smoothed:.3f})" if isinstance(smoothed, int | float) else "")
        + ". "
    )
    collapse = summary.get("collapse_step")
    drop = summary.get("collapse_drop")
    if collapse is not None:
        text += (
            f"Collapse at step {collapse}: accuracy had fallen {_fmt(drop, 2)} or more below "
            "its peak while the reward stayed at or above its level there, so the label-free "
            "reward stopped tracking true accuracy. "
        )
    else:
        text += (
            f"No collapse: accuracy never fell {_fmt(drop, 2)} below its peak while the reward "
            "held. "
        )
    saturation = summary.get("agreement_saturation_step")
    if saturation is not None:
        text += f"Vote agreement within groups saturated at step {saturation}."
    else:
        text += "Vote agreement within groups never saturated."
    return text


def _lm_samples_section(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return ""
    steps = sorted({row.get("step") for row in samples if isinstance(row.get("step"), int)})
    shown = [steps[0], steps[-1]] if len(steps) > 1 else steps
    parts = [
        '<section id="samples" data-section="samples"><h2>Sample completions</h2>',
        f'<p class="note">Completions of one prompt at the first and last recorded steps '
        f"(all {len(samples)} are in {LM_SAMPLES}).</p>",
    ]
    for step in shown[:LM_SAMPLE_STEPS]:
        rows = [
            (
                row.get("prompt", ""),
                row.get("completion", ""),
                "" if row.get("answer") is None else row.get("answer"),
                _fmt(row.get("reward")),
            )
            for row in samples
            if row.get("step") == step
        ]
        parts.append(f"<h3>Step {step}</h3>")
        parts.append(
            _table(
                ["prompt", "completion", "answer", "reward"],
                rows,
                ' class="samples" data-table="samples"',
            )
        )
    parts.append("</section>")
    return "\n".join(parts)


def build_lm_report(run_dir: Path, kind: str) -> str:
    """The HTML report of an `autotelic lm-train` or `lm-pretrain` run directory."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / "config.yaml")
    rows = _lm_rows(run_dir)
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else None
    if not isinstance(summary, dict):
        summary = None
    done = summary or {}
    last = rows[-1]
    if kind == "lm-pretrain":
        title = f"autotelic report: lm-pretrain {config.get('task', '')}"
        items = [
            ("task", f"{config.get('task')} 0..{config.get('max_operand')}"),
            ("parameters", done.get("parameters", "n/a")),
            (
                "model",
                f"d_model {config.get('d_model')}, {config.get('n_layers')} layers, "
                f"{config.get('n_heads')} heads",
            ),
            ("steps", f"{int(last['update'])} of {config.get('steps')}"),
            ("batch size", config.get("batch_size")),
            ("learning rate", config.get("learning_rate")),
            ("final loss", _fmt(last.get("loss"))),
            (
                "held-out accuracy",
                f"{_fmt(done.get('eval_accuracy'))} on {config.get('eval_size')}",
            ),
            ("wall s", _fmt(done.get("wall_seconds"), 1)),
            ("seed", config.get("seed")),
        ]
        body = [
            _table(["", ""], items, ' data-table="summary"'),
            '<h2 id="learning">Learning curves</h2>',
            _plot("lm-pretrain-curves", lm_pretrain_plot(rows), "pretraining curves"),
            '<p class="note">Train on it with <code>autotelic lm-train --model '
            f"{html.escape(str(run_dir))} --reward ...</code>.</p>",
        ]
    else:
        rewards = list(config.get("rewards") or done.get("rewards") or [])
        weights = list(config.get("reward_weights") or [])
        reward_text = ", ".join(
            f"{n} x{w:g}" if weights else str(n)
            for n, w in zip(rewards, weights or [1.0] * len(rewards), strict=False)
        )
        title = f"autotelic report: lm-train [{', '.join(map(str, rewards))}]"
        kl = config.get("kl_beta")
        items = [
            ("model", f"{config.get('model')} ({done.get('backend', '?')}, "
             f"{done.get('parameters', '?')} parameters)"),
            ("rewards", reward_text),
            ("tasks", done.get("tasks", config.get("tasks") or config.get("task") or "testbed")),
            ("steps", f"{int(last['update'])} of {config.get('steps')}"),
            ("prompts x group", f"{config.get('prompts_per_step')} x {config.get('group_size')}"),
            ("learning rate", config.get("learning_rate")),
            ("loss", f"{config.get('loss')} (clip {config.get('clip_eps')}, KL {kl}, "
             f"{config.get('epochs')} epoch(s))"),
            ("temperature", config.get("temperature")),
            ("held-out accuracy", f"{_fmt(done.get('initial_accuracy'))} -> "
             f"{_fmt(done.get('final_accuracy'))} on {done.get('eval_size', '?')} questions"),
            ("last reward / loss", f"{_fmt(last.get('reward'))} / {_fmt(last.get('loss'))}"),
            ("s per step", _fmt(done.get("seconds_per_step"), 3)),
            ("wall s", _fmt(done.get("wall_seconds"), 1)),
            ("seed", config.get("seed")),
        ]  # fmt: skip
        body = [
            _table(["", ""], items, ' data-table="summary"'),
        ]
        if summary is None:
            body.append('<p class="note">No summary.json yet: the run has not finished.</p>')
        body += [
            '<h2 id="collapse">Collapse monitor</h2>',
            f'<p class="note" data-section="collapse">{html.escape(_lm_collapse_sentence(summary))}'
            " Vertical lines mark these steps in every plot.</p>",
            '<h2 id="rewards">Rewards</h2>',
            _plot("lm-rewards", lm_rewards_plot(rows, done), "training reward"),
            '<h2 id="accuracy">Accuracy</h2>',
            '<p class="note">Held-out accuracy is measured greedily on questions the policy '
            "never trains on (step 0: before training); sample accuracy scores the step's "
            "sampled completions; vote agreement is the share of a group agreeing with its "
            "majority answer and needs no labels.</p>",
            _plot("lm-accuracy", lm_accuracy_plot(rows, done), "accuracy and agreement"),
            '<h2 id="policy">Policy</h2>',
            _plot("lm-policy", lm_policy_plot(rows, done), "entropy, length, KL and loss"),
        ]
        samples = _lm_samples_section(_lm_samples(run_dir))
        if samples:
            body.append(samples)
    header = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(str(run_dir.resolve()))}; written by autotelic '
        f"{__version__}.</p>",
    ]
    return _page(title, header + body)


# ------------------------------------------------------------------------------------ bench


def _interval(value: Any, digits: int) -> str:
    if not isinstance(value, dict) or value.get("iqm") is None:
        return "n/a"
    return (
        f"{value['iqm']:.{digits}f} [{value.get('low', math.nan):.{digits}f}, "
        f"{value.get('high', math.nan):.{digits}f}]"
    )


def write_bench_report(bench_out: Path) -> Path:
    """Write BENCH_OUT/report.html: the results table, the learning curves, the dominant reward
    source of each configuration late in training, and a report per configuration (written into
    each configuration's directory and linked). Returns the path of the bench page."""
    from ..runs import atomic_write_text

    bench_out = Path(bench_out)
    results_path = bench_out / "results.json"
    if not results_path.exists():
        raise UserError(
            f"{str(bench_out)!r} holds no bench results (results.json); pass the directory "
            "that `autotelic bench --out` wrote."
        )
    results = _read_json(results_path)
    configurations = results.get("configurations", [])
    rows = []
    for row in configurations:
        link, dominant = "", "n/a"
        directory = bench_out / str(row.get("dir", ""))
        try:
            report_path = write_report(directory)
            link = (
                f'<a href="{html.escape(report_path.relative_to(bench_out).as_posix())}">report</a>'
            )
            seeds, _ = run_data(directory)
            usable = [s for s in seeds if s.rows]
            history = training_credit(usable, seeds[0].heads)
            tail = max(1, len(history.update) // 10)
            late = history.scale_shares[-tail:].mean(axis=0)
            dominant = ", ".join(f"{n} {v:.0%}" for n, v in zip(history.names, late, strict=True))
        except UserError as error:
            link = html.escape(f"no report: {error}")
        cells = [
            row.get("task", ""),
            row.get("rewards", ""),
            _interval(row.get("final_return"), 3),
            _interval(row.get("success_rate"), 2),
            row.get("status", ""),
            dominant,
        ]
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + f"<td>{link}</td></tr>"
        )
    header = (
        "<tr><th>task</th><th>rewards</th><th>final return IQM [95% CI]</th>"
        "<th>success rate IQM [95% CI]</th><th>status</th>"
        "<th>advantage spread, last 10% of updates</th><th></th></tr>"
    )
    curves = []
    for name in results.get("curves", []):
        path = bench_out / name
        if path.exists():
            uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
            stem = Path(name).stem
            curves.append(
                f'<img class="plot" id="plot-{html.escape(stem)}" data-plot="bench-curves" '
                f'data-task="{html.escape(stem)}" src="{uri}" alt="{html.escape(stem)}">'
            )
    title = f"autotelic bench {results.get('name', bench_out.name)}"
    seeds = ", ".join(str(s) for s in results.get("seeds", []))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(str(bench_out.resolve()))}: {results.get("steps", "?")} '
        f"env steps per seed, seeds {html.escape(seeds)}.</p>",
        f"<table><thead>{header}</thead><tbody>{''.join(rows)}</tbody></table>",
        f'<p class="note">{html.escape(str(results.get("notes", "")))} Advantage spread: each '
        "head's share of |coef| x std of its advantage, averaged over the last 10% of updates "
        "and the seeds.</p>",
        "<h2>Learning curves</h2>",
        *curves,
    ]
    path = bench_out / REPORT_NAME
    atomic_write_text(path, _page(title, body))
    return path
