"""Interactive style-transfer explorer (notebook 06): pick a slice, style references, alpha,
blend weights and a display window, and see the stylized slice and a difference map live.

* :func:`render` is the pure part: one content slice + style references -> a dict of images
  (tested, usable without widgets);
* :func:`frame_figure` draws one rendered frame with matplotlib;
* :func:`build_explorer` wires ipywidgets controls to both through
  ``ipywidgets.interactive_output``.

**Display window.** The slices are already windowed CT: gray values in [0, 1] (the source
style is the bone window W2000/L500). The explorer's level/width sliders are a *display
contrast* on those gray values, ``clip((v - (level - width/2)) / width, 0, 1)``
(:func:`ctxstyle.data.window` applied to [0, 1] values), applied identically to every panel
after stylization. It changes what you see, never what the network gets: re-windowing the
content from HU instead would feed the decoder a gray scale it was not trained on (its content
images were all in the source window). For the content, a display window (level, width) on
gray values corresponds to the HU window given by :func:`display_window_hu`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["NO_STYLE", "build_explorer", "display_window_hu", "frame_figure", "render"]

#: Dropdown entry that switches an extra style reference off.
NO_STYLE = "(none)"


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
    from .data import window

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
    from .stylize import default_window

    src_level, src_width = source_window or default_window()
    low = src_level - src_width / 2.0
    return low + level * src_width, width * src_width


def frame_figure(frame: Mapping[str, np.ndarray], titles: Sequence[str] | None = None,
                 suptitle: str | None = None, size: float = 2.6):
    """One row: content, each style reference, stylized, difference (stylized - content)."""
    import matplotlib.pyplot as plt

    styles = frame["styles_shown"]
    k = len(styles)
    titles = list(titles) if titles is not None else [f"style {i + 1}" for i in range(k)]
    n = k + 3
    fig, axes = plt.subplots(1, n, figsize=(size * n, size * 1.1), squeeze=False)
    axes = axes[0]
    panels = [("content", frame["content_shown"])] + list(zip(titles, styles)) + [("stylized", frame["stylized_shown"])]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    lim = max(float(np.abs(frame["difference"]).max()), 1e-3)
    im = axes[-1].imshow(frame["difference"], cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[-1].set_title("stylized - content", fontsize=9)
    fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def build_explorer(stylizer, contents, style_images: Mapping[str, np.ndarray], *, n_styles: int = 2,
                   content_labels: Sequence[str] | None = None, defaults: Mapping | None = None):
    """An ipywidgets explorer (returns a ``VBox``; display it as the cell's last expression).

    ``contents`` (N, H, W): the slices to pick from; ``style_images``: style name -> (M, h, w)
    references in that style. ``n_styles`` rows of (style, reference index, weight) controls;
    rows after the first may be switched off with :data:`NO_STYLE`. ``defaults`` may set
    ``slice``, ``alpha``, ``level``, ``width``, ``style0``, ``index0``, ``weight0``, ``style1``...
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    contents = np.asarray(contents, dtype=np.float32)
    if contents.ndim != 3 or len(contents) == 0:
        raise InputError("contents", f"expected a non-empty stack (N, H, W), got shape {contents.shape}")
    if not style_images:
        raise InputError("style_images", "needs at least one style")
    names = list(style_images)
    d = {"slice": len(contents) // 2, "alpha": 1.0, "level": 0.5, "width": 1.0, **(defaults or {})}
    layout = w.Layout(width="420px")
    style = {"description_width": "110px"}
    controls: dict[str, w.Widget] = {
        "slice": w.IntSlider(d["slice"], 0, len(contents) - 1, description="content slice", layout=layout, style=style,
                              continuous_update=False),
        "alpha": w.FloatSlider(d["alpha"], min=0.0, max=1.0, step=0.05, description="alpha", layout=layout, style=style,
                              continuous_update=False),
        "level": w.FloatSlider(d["level"], min=0.0, max=1.0, step=0.01, description="display level", layout=layout, style=style,
                              continuous_update=False),
        "width": w.FloatSlider(d["width"], min=0.05, max=2.0, step=0.01, description="display width", layout=layout, style=style,
                              continuous_update=False),
    }
    rows = []
    for k in range(n_styles):
        options = names if k == 0 else [NO_STYLE, *names]
        default_style = d.get(f"style{k}", names[0] if k == 0 else NO_STYLE)
        n_refs = max(len(style_images[n]) for n in names)
        controls[f"style{k}"] = w.Dropdown(options=options, value=default_style, description=f"style {k + 1}",
                                           style=style)
        controls[f"index{k}"] = w.IntSlider(d.get(f"index{k}", 0), 0, n_refs - 1, description="reference", style=style,
                                            continuous_update=False)
        controls[f"weight{k}"] = w.FloatSlider(d.get(f"weight{k}", 1.0), min=0.0, max=1.0, step=0.05,
                                               description="weight", style=style, continuous_update=False)
        rows.append(w.HBox([controls[f"style{k}"], controls[f"index{k}"], controls[f"weight{k}"]]))

    def update(**kw):
        refs, weights, titles = [], [], []
        for k in range(n_styles):
            name = kw[f"style{k}"]
            if name == NO_STYLE:
                continue
            bank = style_images[name]
            idx = min(kw[f"index{k}"], len(bank) - 1)
            refs.append(bank[idx])
            weights.append(kw[f"weight{k}"])
            titles.append(f"{name} #{idx} (w {kw[f'weight{k}']:.2f})")
        if sum(weights) <= 0:
            print("All style weights are 0: raise at least one weight.")
            return
        frame = render(stylizer, contents[kw["slice"]], refs, weights, kw["alpha"], kw["level"], kw["width"])
        lhu, whu = display_window_hu(kw["level"], kw["width"])
        label = content_labels[kw["slice"]] if content_labels is not None else f"slice {kw['slice']}"
        fig = frame_figure(frame, titles, suptitle=f"{label}   alpha {kw['alpha']:.2f}   display window "
                           f"{kw['level']:.2f}/{kw['width']:.2f} (content: L{lhu:.0f}/W{whu:.0f} HU)")
        display(fig)
        plt.close(fig)

    out = w.interactive_output(update, controls)
    panel = w.VBox([w.HBox([w.VBox([controls["slice"], controls["alpha"]]),
                            w.VBox([controls["level"], controls["width"]])]), *rows, out])
    panel.controls = controls  # for programmatic use and tests
    panel.output = out
    return panel
