"""Pictures people would rather look at than read (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_fit", "plot_layers", "plot_pareto", "plot_graph_cut", "plot_predicted_vs_measured", "save_figure"]

_CLASS_COLORS = {"conv": "tab:blue", "dwconv": "tab:cyan", "gemm": "tab:orange", "memory": "tab:green", "maxpool": "tab:olive",
                 "generic": "tab:red"}


def save_figure(fig: Any, path: Any, dpi: int = 110) -> None:
    """``fig.savefig`` into ``path``, creating its folder first (plots go to folders that may not exist yet)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fit(report: Any, data: Any, predictor: Any, path: str) -> None:
    """Predicted (in-sample, chosen models) vs measured latency per op type, log-log."""
    plt = _plt()
    ops = data.ops
    cols = 5
    rows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        y = data.latency_ms[op]
        p = predictor.predict(data.specs[op])
        ax.loglog(y, p, ".", ms=3)
        lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="g", alpha=0.15)
        ax.set_title(f"{op} ({report.per_op_choice[op]})", fontsize=9)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.supxlabel("measured ms")
    fig.supylabel("predicted ms")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_layers(graph: Any, node_ms: np.ndarray, path: str, title: str = "", top: int = 40) -> None:
    """Horizontal bars: predicted ms of the ``top`` slowest compute nodes, in model order, coloured by class."""
    from .graph.compose import node_classes

    plt = _plt()
    idx = [j for j, n in enumerate(graph.nodes) if n.kind == "compute"]
    keep = sorted(sorted(idx, key=lambda j: -node_ms[j])[:top])
    names = [graph.nodes[j].name for j in keep]
    classes = node_classes(graph)
    colors = [_CLASS_COLORS[classes[j]] for j in keep]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(keep) + 1.2))
    ax.barh(range(len(keep)), [node_ms[j] for j in keep], color=colors)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("predicted latency (ms, composed)")
    shown = sum(node_ms[j] for j in keep)
    ax.set_title(title or f"{graph.name}: {len(keep)} slowest of {len(idx)} nodes ({shown:.1f} of "
                 f"{float(np.sum(node_ms)):.1f} ms)", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _CLASS_COLORS.values()]
    ax.legend(handles, list(_CLASS_COLORS), fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_pareto(points: Sequence[tuple[float, float]], chosen: tuple[float, float] | None, path: str,
                xlabel: str = "predicted latency (ms)", ylabel: str = "edge memory (MiB)", title: str = "") -> None:
    """A Pareto front (two objectives) with the chosen plan highlighted."""
    plt = _plt()
    pts = np.array(sorted(points))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.step(pts[:, 0], pts[:, 1], where="post", color="grey", lw=0.8)
    ax.scatter(pts[:, 0], pts[:, 1], s=25, label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1]], s=120, marker="*", color="tab:red", label="chosen (lowest latency)")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_graph_cut(graph: Any, assignment: Sequence[int], path: str, devices: Sequence[str] = ("edge", "cloud"),
                   title: str = "") -> None:
    """The model graph laid out by topological depth, nodes coloured by device, tensors crossing devices in red."""
    import networkx as nx

    plt = _plt()
    g = graph.to_networkx()
    depth: dict[str, int] = {}
    for n in graph.nodes:
        preds = [u for u, _ in g.in_edges(n.name)]
        depth[n.name] = 1 + max((depth[p] for p in preds), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for n in graph.nodes:
        d = depth[n.name]
        pos[n.name] = (d, -rows.get(d, 0))
        rows[d] = rows.get(d, 0) + 1
    where = dict(zip((n.name for n in graph.nodes), assignment))
    palette = ["tab:green", "tab:purple", "tab:blue", "tab:orange"]
    colors = [palette[where[n] % len(palette)] for n in g.nodes]
    cut = [(u, v) for u, v in g.edges if where[u] != where[v]]
    rest = [(u, v) for u, v in g.edges if where[u] == where[v]]
    width = max(6.0, 0.12 * (max(depth.values()) + 1))
    fig, ax = plt.subplots(figsize=(min(width, 40.0), 3 + 0.4 * max(rows.values())))
    nx.draw_networkx_edges(g, pos, edgelist=rest, ax=ax, edge_color="lightgrey", arrows=False, width=0.8)
    nx.draw_networkx_edges(g, pos, edgelist=cut, ax=ax, edge_color="red", arrows=True, width=2.0)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=30, node_color=colors)
    handles = [plt.Line2D([], [], marker="o", ls="", color=palette[i % len(palette)], label=d) for i, d in enumerate(devices)]
    handles.append(plt.Line2D([], [], color="red", lw=2, label="tensor sent between devices"))
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(title or f"{graph.name}: {len(cut)} tensor edge(s) cross devices", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def plot_predicted_vs_measured(rows: Sequence[tuple[str, float, float]], path: str, title: str = "") -> None:
    """Scatter of (label, predicted ms, measured ms) with the ±10% band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    p = np.array([r[1] for r in rows])
    m = np.array([r[2] for r in rows])
    for label, pp, mm in rows:
        ax.scatter([mm], [pp], s=30)
        ax.annotate(label, (mm, pp), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo, hi = float(min(p.min(), m.min()) * 0.8), float(max(p.max(), m.max()) * 1.25)
    xs = np.geomspace(lo, hi, 20)
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.2)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured ms", ylabel="predicted ms",
           title=title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
