"""Interactive style-transfer explorer (notebook 06): pick a slice, style references, alpha,
blend weights and a display window, and see the stylized slice and a difference map live.

* :func:`render` is the pure part: one content slice + style references -> a dict of images
  (tested, usable without widgets);
* :func:`frame_figure` draws one rendered frame with matplotlib;
* :func:`build_explorer` wires ipywidgets controls to both (a status line says when a new
  picture is being computed; the picture and its title change together).

**Display window.** The slices are already windowed CT: gray values in [0, 1] (the source
style's window, :func:`ctxstyle.stylize.default_window`). The explorer's display window is set in
HU (level/width sliders and presets: the source style, bone W2000/L500, soft tissue W400/L40):
gray values are read as HU through the source window (as ``ctxstyle stylize`` writes its
results) and shown through the chosen window, identically for every panel, after stylization
(:func:`gray_window` turns the HU window into one on gray values for :func:`render`). It changes
what you see, never what the network gets: re-windowing the content from HU instead would feed
the decoder a gray scale it was not trained on (its content images were all in the source
window). :func:`display_window_hu` is the inverse of :func:`gray_window`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ctxstyle.errors import InputError

__all__ = ["DIFFERENCE_LIMIT", "NO_STYLE", "build_explorer", "display_window_hu", "frame_figure", "gray_window",
           "render", "window_presets"]

#: Dropdown entry that switches an extra style reference off.
NO_STYLE = "(none)"
#: The difference map's fixed colour range (gray values): the same colour means the same change
#: in every frame.
DIFFERENCE_LIMIT = 0.5


def _gray(image, name: str) -> np.ndarray:
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(name, f"expected one gray image (H, W), got shape {arr.shape}")
    return arr


def render(stylizer, content, styles: Sequence, weights: Sequence[float] | None = None,
           alpha: float = 1.0, level: float = 0.5, width: float = 1.0) -> dict[str, np.ndarray]:
    """Stylize one slice and prepare everything the explorer shows.

    ``content`` (H, W) and each of ``styles`` (h, w) are gray images in [0, 1]; ``weights``
    blend the styles (normalised to sum 1; default equal); ``alpha`` trades content features
    (0: the decoder's reconstruction D(E(x))) against the AdaIN target (1). ``level`` and
    ``width`` are the display window on gray values (default 0.5 / 1.0 = unchanged).

    Returns float32 arrays: ``content`` and ``stylized`` (H, W) in [0, 1], ``styles`` (K, h, w),
    ``difference`` = stylized - content in [-1, 1], and ``content_shown``, ``stylized_shown``,
    ``styles_shown`` after the display window (in [0, 1]).
    """
    from ctxstyle.data import window

    if not styles:
        raise InputError("styles", "at least one style reference is needed")
    if not width > 0:
        raise InputError("width", f"the display width must be positive, got {width}")
    x = _gray(content, "content")
    refs = [_gray(s, f"styles[{k}]") for k, s in enumerate(styles)]
    shapes = {r.shape for r in refs}
    if len(shapes) > 1:
        raise InputError("styles", f"style references differ in size {sorted(shapes)}")
    style_stack = np.stack(refs)
    out = stylizer(torch.from_numpy(x)[None, None], torch.from_numpy(style_stack)[:, None],
                   weights=list(weights) if weights is not None else None, alpha=float(alpha))
    y = out[0, 0].numpy().astype(np.float32)
    return {
        "content": x,
        "stylized": y,
        "styles": style_stack,
        "difference": (y - x).astype(np.float32),
        "content_shown": window(x, level, width),
        "stylized_shown": window(y, level, width),
        "styles_shown": window(style_stack, level, width),
    }


def display_window_hu(level: float, width: float, source_window: tuple[float, float] | None = None
                      ) -> tuple[float, float]:
    """The HU window (level, width) that a display window on the content's gray values amounts
    to, for content rendered with ``source_window`` (default: the protocol's source window)."""
    from ctxstyle.stylize import default_window

    src_level, src_width = source_window or default_window()
    low = src_level - src_width / 2.0
    return low + level * src_width, width * src_width


def gray_window(level_hu: float, width_hu: float, source_window: tuple[float, float] | None = None
                ) -> tuple[float, float]:
    """The display window (level, width) on gray values in [0, 1] that shows the HU window
    (``level_hu``, ``width_hu``) of images rendered with ``source_window`` (default: the
    protocol's source window); the inverse of :func:`display_window_hu`."""
    from ctxstyle.stylize import default_window

    if not width_hu > 0:
        raise InputError("width", f"the HU window width must be positive, got {width_hu}")
    src_level, src_width = source_window or default_window()
    low = src_level - src_width / 2.0
    return (level_hu - low) / src_width, width_hu / src_width


def window_presets(source_window: tuple[float, float] | None = None) -> dict[str, tuple[float, float]]:
    """Named HU windows (level, width): the source style's, bone W2000/L500, soft tissue W400/L40
    (the bone window is left out when it is the source style's)."""
    from ctxstyle.stylize import default_window

    level, width = source_window or default_window()
    presets = {f"source style (W{width:.0f}/L{level:.0f})": (float(level), float(width))}
    for name, win in (("bone (W2000/L500)", (500.0, 2000.0)), ("soft tissue (W400/L40)", (40.0, 400.0))):
        if win not in presets.values():
            presets[name] = win
    return presets


def frame_figure(frame: Mapping[str, np.ndarray], titles: Sequence[str] | None = None,
                 suptitle: str | None = None, size: float = 2.6, difference_limit: float = DIFFERENCE_LIMIT,
                 difference_label: str = "stylized - content (gray value)"):
    """One row: content, each style reference, stylized, difference (stylized - content).

    The difference map's colours span a fixed +-``difference_limit`` (larger changes saturate),
    labelled by ``difference_label``, so that frames can be compared."""
    import matplotlib.pyplot as plt

    styles = frame["styles_shown"]
    k = len(styles)
    titles = list(titles) if titles is not None else [f"style {i + 1}" for i in range(k)]
    n = k + 3
    fig, axes = plt.subplots(1, n, figsize=(size * n, size * 1.15), squeeze=False)
    axes = axes[0]
    panels = [("content", frame["content_shown"])] + list(zip(titles, styles)) + [("stylized", frame["stylized_shown"])]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    im = axes[-1].imshow(frame["difference"], cmap="RdBu_r", vmin=-difference_limit, vmax=difference_limit)
    axes[-1].set_title("stylized - content", fontsize=9)
    bar = fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04)
    bar.set_label(difference_label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def _thumbnail(image: np.ndarray, size: int = 64) -> bytes:
    """PNG bytes of a gray image in [0, 1], resized to ``size`` px on its longer side."""
    import io

    from PIL import Image

    pic = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    scale = size / max(pic.size)
    pic = pic.resize((max(1, round(pic.size[0] * scale)), max(1, round(pic.size[1] * scale))))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def build_explorer(stylizer, contents, style_images: Mapping[str, np.ndarray], *, n_styles: int = 2,
                   content_labels: Sequence[str] | None = None, defaults: Mapping | None = None,
                   save_dir: str | Path | None = None, source_window: tuple[float, float] | None = None):
    """An ipywidgets explorer (returns a ``VBox``; display it as the cell's last expression).

    ``contents`` (N, H, W): the slices to pick from; ``style_images``: style name -> (M, h, w)
    references in that style. ``n_styles`` rows of (style, reference index + thumbnail, weight)
    controls; rows after the first may be switched off with :data:`NO_STYLE`, and a style with
    weight 0 is left out of the blend and the figure. The display window is in HU
    (``level``, ``width`` sliders and a ``window`` preset, :func:`window_presets`). ``defaults``
    may set ``slice``, ``alpha``, ``window`` (a preset name), ``level``, ``width``, ``style0``,
    ``index0``, ``weight0``, ``style1``... "reset" restores them. "save frame" writes the picture
    (PNG) and its settings (JSON) to a new file pair in ``save_dir`` (a scratch folder; never over
    an existing file); without ``save_dir`` the button is disabled.

    Attributes of the returned panel, for programmatic use and tests: ``controls``, ``output``,
    ``status`` (the status line), ``buttons``, ``refresh()``, ``reset()``, ``save()`` (returns the
    PNG path), ``shown()`` (the settings, frame and figure shown now, or None).
    """
    import datetime as _dt
    import json
    import time

    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    contents = np.asarray(contents, dtype=np.float32)
    if contents.ndim != 3 or len(contents) == 0:
        raise InputError("contents", f"expected a non-empty stack (N, H, W), got shape {contents.shape}")
    if not style_images:
        raise InputError("style_images", "needs at least one style")
    names = list(style_images)
    presets = window_presets(source_window)
    first = next(iter(presets))
    d = {"slice": len(contents) // 2, "alpha": 1.0, "window": first, **(defaults or {})}
    if d["window"] not in presets:
        raise InputError("defaults", f"window {d['window']!r} is not one of {list(presets)}")
    d.setdefault("level", presets[d["window"]][0])
    d.setdefault("width", presets[d["window"]][1])
    for k in range(n_styles):
        d.setdefault(f"style{k}", names[0] if k == 0 else NO_STYLE)
        d.setdefault(f"index{k}", 0)
        d.setdefault(f"weight{k}", 1.0)
    src_level, src_width = source_window or _default_window()
    layout = w.Layout(width="420px")
    style = {"description_width": "110px"}
    slider = dict(layout=layout, style=style, continuous_update=False)
    controls: dict[str, w.Widget] = {
        "slice": w.IntSlider(d["slice"], 0, len(contents) - 1, description="content slice", **slider),
        "alpha": w.FloatSlider(d["alpha"], min=0.0, max=1.0, step=0.05, description="alpha", **slider),
        "window": w.Dropdown(options=[*presets, "custom"], value=d["window"], description="display window",
                             layout=layout, style=style),
        "level": w.FloatSlider(d["level"], min=-1000.0, max=2000.0, step=10.0, description="level (HU)", **slider),
        "width": w.FloatSlider(d["width"], min=50.0, max=4000.0, step=10.0, description="width (HU)", **slider),
    }
    rows, thumbs = [], {}
    n_refs = max(len(style_images[n]) for n in names)
    for k in range(n_styles):
        options = names if k == 0 else [NO_STYLE, *names]
        controls[f"style{k}"] = w.Dropdown(options=options, value=d[f"style{k}"], description=f"style {k + 1}",
                                           style=style)
        controls[f"index{k}"] = w.IntSlider(d[f"index{k}"], 0, n_refs - 1, description="reference", style=style,
                                            continuous_update=False)
        controls[f"weight{k}"] = w.FloatSlider(d[f"weight{k}"], min=0.0, max=1.0, step=0.05, description="weight",
                                               style=style, continuous_update=False)
        thumbs[k] = w.Image(format="png", layout=w.Layout(width="48px", height="48px"))
        rows.append(w.HBox([controls[f"style{k}"], controls[f"index{k}"], thumbs[k], controls[f"weight{k}"]]))
    status = w.HTML()
    out = w.Output()
    buttons = {"reset": w.Button(description="reset", icon="undo"),
               "save": w.Button(description="save frame", icon="save", disabled=save_dir is None,
                                tooltip="PNG + JSON of the settings into " + (str(save_dir) if save_dir else "(no save_dir)"))}
    state = {"hold": False, "last": None}

    def chosen(values: Mapping):
        refs, weights, titles = [], [], []
        for k in range(n_styles):
            name = values[f"style{k}"]
            thumbs[k].layout.visibility = "hidden" if name == NO_STYLE else "visible"
            if name == NO_STYLE:
                continue
            bank = style_images[name]
            idx = min(values[f"index{k}"], len(bank) - 1)
            thumbs[k].value = _thumbnail(bank[idx])
            if values[f"weight{k}"] <= 0:  # a style with weight 0 plays no part: not drawn either
                continue
            refs.append(bank[idx])
            weights.append(values[f"weight{k}"])
            titles.append(f"{name} #{idx} (w {values[f'weight{k}']:.2f})")
        return refs, weights, titles

    def refresh(_=None):
        if state["hold"]:
            return
        values = {k: c.value for k, c in controls.items()}
        refs, weights, titles = chosen(values)
        if not refs:
            status.value = "<b>All style weights are 0</b>: raise at least one weight (the picture below is the last one)."
            return
        status.value = "<b>&#8987; computing the new picture ...</b> (the one below still shows the previous settings)"
        t0 = time.perf_counter()
        level, width = gray_window(values["level"], values["width"], (src_level, src_width))
        frame = render(stylizer, contents[values["slice"]], refs, weights, values["alpha"], level, width)
        label = content_labels[values["slice"]] if content_labels is not None else f"slice {values['slice']}"
        fig = frame_figure(frame, titles, suptitle=f"{label}   alpha {values['alpha']:.2f}   display window "
                           f"W{values['width']:.0f}/L{values['level']:.0f} HU",
                           difference_label=f"stylized - content (gray; {DIFFERENCE_LIMIT:g} = "
                                            f"{DIFFERENCE_LIMIT * src_width:.0f} HU)")
        with out:
            out.clear_output(wait=True)
            display(fig)
        state["last"] = {"settings": values, "figure": fig, "frame": frame, "label": label}
        plt.close(fig)
        status.value = f"shown: {label}, alpha {values['alpha']:.2f} ({time.perf_counter() - t0:.1f} s)"

    def set_values(values: Mapping):
        state["hold"] = True
        try:
            for key, value in values.items():
                controls[key].value = value
        finally:
            state["hold"] = False
        refresh()

    def on_preset(change):
        if change["new"] in presets and not state["hold"]:
            level, width = presets[change["new"]]
            set_values({"level": level, "width": width})

    def on_window(_):
        if state["hold"]:
            return
        match = [name for name, win in presets.items() if win == (controls["level"].value, controls["width"].value)]
        state["hold"] = True
        try:
            controls["window"].value = match[0] if match else "custom"
        finally:
            state["hold"] = False
        refresh()

    def reset(_=None):
        set_values({k: d[k] for k in controls})

    def save(_=None) -> Path | None:
        if save_dir is None or state["last"] is None:
            return None
        folder = Path(save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        png, meta = folder / f"frame-{stamp}.png", folder / f"frame-{stamp}.json"
        settings = {k: (v.item() if hasattr(v, "item") else v) for k, v in state["last"]["settings"].items()}
        with open(meta, "x") as f:  # "x": never over an existing file
            json.dump({"content": state["last"]["label"], "settings": settings,
                       "checkpoint": getattr(stylizer, "checkpoint", None)}, f, indent=2)
        with open(png, "xb") as f:
            state["last"]["figure"].savefig(f, format="png", dpi=120)
        status.value = f"saved {png}"
        return png

    for key, control in controls.items():
        if key == "window":
            control.observe(on_preset, names="value")
        elif key in ("level", "width"):
            control.observe(on_window, names="value")
        else:
            control.observe(refresh, names="value")
    buttons["reset"].on_click(reset)
    buttons["save"].on_click(save)
    panel = w.VBox([w.HBox([w.VBox([controls["slice"], controls["alpha"]]),
                            w.VBox([controls["window"], controls["level"], controls["width"]])]),
                    *rows, w.HBox([buttons["reset"], buttons["save"], status]), out])
    panel.controls, panel.output, panel.status, panel.buttons = controls, out, status, buttons
    panel.refresh, panel.reset, panel.save = refresh, reset, save
    panel.shown = lambda: state["last"]
    refresh()
    return panel


def _default_window() -> tuple[float, float]:
    from ctxstyle.stylize import default_window

    return default_window()
