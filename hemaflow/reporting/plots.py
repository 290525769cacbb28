"""Figures for reports, as PNG bytes: matplotlib (Agg backend) charts and Pillow mosaics.

matplotlib is imported on first use, so importing this module stays light.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def image_grid(
    images: np.ndarray | Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    columns: int = 8,
    cell: float = 1.3,
    suptitle: str = "",
) -> bytes:
    """A PNG of uint8 images laid out in a grid, each with an optional title."""
    plt = pyplot()
    count = len(images)
    rows = max(1, -(-count // columns))
    lines = max((str(t).count("\n") + 1 for t in titles or []), default=0)
    height = rows * cell * (1 + 0.15 * lines)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell, height))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < count:
            ax.imshow(np.asarray(images[i]), interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return figure_png(fig)


def mosaic_png(rows: list[list[np.ndarray]], labels: list[str], gap: int = 3) -> bytes:
    """One PNG of labelled rows of images (drawn with Pillow, upscaled to >= 64 px).

    Rows of pictures with a caption band each read better than a square subplot grid, and
    one image renders in milliseconds where a subplot per picture takes seconds.
    """
    from PIL import Image, ImageDraw

    size = rows[0][0].shape[0]
    scale = max(1, -(-64 // size))
    cell = size * scale
    band = 14
    width = max(len(r) for r in rows) * (cell + gap) + gap
    height = len(rows) * (band + cell + gap) + gap
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([width, *(int(draw.textlength(text)) + 2 * gap for text in labels)])
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for row, label in zip(rows, labels, strict=True):
        draw.text((gap, y), label, fill=(0, 0, 0))
        y += band
        for k, image in enumerate(row):
            picture = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(picture, (gap + k * (cell + gap), y))
        y += cell + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def bar_chart(
    labels: Sequence[str], values: Sequence[float], title: str, ylabel: str = "", ylim=None
) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(labels)), 3.2))
    ax.bar(range(len(labels)), values, color="#4C72B0")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    return figure_png(fig)


def confusion_matrix_png(matrix: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    plt = pyplot()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    rows = matrix.sum(axis=1, keepdims=True)
    shown = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            if matrix[i, j]:
                colour = "white" if shown[i, j] > 0.5 else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


def curves_png(history: dict[str, list[float]], title: str = "") -> bytes:
    """Loss and accuracy per epoch, train and val, as a PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def reliability_png(table: dict[str, list[float]], title: str) -> bytes:
    plt = pyplot()
    edges = np.asarray(table["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    counts = np.asarray(table["count"])
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], "--", color="#999", label="perfect calibration")
    busy = counts > 0
    ax.bar(
        centers[busy],
        np.asarray(table["accuracy"])[busy],
        width=edges[1] - edges[0],
        alpha=0.7,
        edgecolor="#333",
        label="accuracy",
    )
    ax.plot(
        np.asarray(table["confidence"])[busy],
        np.asarray(table["accuracy"])[busy],
        "o",
        color="#C44E52",
        markersize=3,
        label="mean confidence",
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


def severity_png(by_corruption: dict[str, dict[int, dict[str, float]]], clean: float) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, rows in by_corruption.items():
        sev = sorted(rows)
        ax.plot(sev, [rows[s]["accuracy"] for s in sev], marker="o", markersize=3, label=name)
    ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_xticks(sorted({s for rows in by_corruption.values() for s in rows}))
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title("accuracy by severity", fontsize=10)
    return figure_png(fig)
