"""Plotly figures and HTML built from round traces and alignments: what the app and the notebooks show.

Presentation only: nothing in the core library imports this module. Token strings are shown as the library
gives them (byte pieces already read ``<0xE4>``); nothing here decodes bytes.
"""

from __future__ import annotations

import html
from itertools import accumulate

import numpy as np
import plotly.graph_objects as go

from ..core import dtw
from ..core.trace import BONUS, CORRECTION, TARGET, RoundTrace

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
GREEN, VERMILLION, BLUE, ORANGE, PURPLE, SKY, GREY = ("#009E73", "#D55E00", "#0072B2", "#E69F00", "#CC79A7",
                                                      "#56B4E9", "#8c8c8c")
#: Colour and underline style by origin of a written token: the style carries the meaning without colour.
ORIGIN_COLOURS = {"accepted": GREEN, CORRECTION: VERMILLION, BONUS: BLUE, TARGET: PURPLE}
ORIGIN_STYLES = {"accepted": "solid", CORRECTION: "wavy", BONUS: "double", TARGET: "dotted"}
ORIGIN_LABELS = {"accepted": "accepted proxy", CORRECTION: "target correction", BONUS: "bonus token",
                 TARGET: "target alone"}
ACCEPTED_LINK, REJECTED_LINK, UNTESTED_LINK = GREEN, VERMILLION, GREY
#: Path dots: accepted proxies are circles, rejected ones crosses (shape, not only colour).
ACCEPTED_SYMBOL, REJECTED_SYMBOL, UNTESTED_SYMBOL = "circle", "x", "circle-open"
#: Edit distances above this share the darkest colour; a fixed scale makes rounds comparable.
COST_SCALE_MAX = 8
#: The most tokens per side a heatmap draws; longer alignments are shown through a movable window.
WINDOW = 96


def visible(token: str) -> str:
    """A token string with whitespace made visible (for axis labels and tables)."""
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "→").replace("\r", "⏎") or "∅"


def _layout(fig: go.Figure, title: str, height: int = 360, top: int = 48, bottom: int = 10) -> go.Figure:
    # Title pinned to the top of the figure, the plot area below it: axis titles never reach it.
    fig.update_layout(title=dict(text=title, x=0.01, y=0.99, yanchor="top", yref="container", font=dict(size=14)),
                      height=height, margin=dict(l=10, r=10, t=top, b=bottom), template="plotly_white",
                      hovermode="closest", modebar=dict(orientation="v"))  # a vertical toolbar keeps off the title
    return fig


def _empty(title: str, message: str, height: int = 240) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height)


# -- the written text -------------------------------------------------------------------------------
def written_tokens(rounds: list[RoundTrace]):
    """(token string, origin, round index, probability, draft tokens it came from, special) per written token."""
    for trace in rounds:
        mapping = trace.proxy_to_draft
        for j in range(trace.accepted):
            sources = " ".join(visible(trace.draft_tokens[i]) for i in mapping[j]) if mapping else ""
            yield trace.proxy_tokens[j], "accepted", trace.index, trace.token_probs[j], sources, False
        special = bool(getattr(trace, "emitted_special", False))
        yield trace.emitted_token, trace.emitted_kind, trace.index, trace.token_probs[-1], "", special


def _mark(origin: str) -> str:
    colour = ORIGIN_COLOURS[origin]
    return (f"text-decoration:underline {ORIGIN_STYLES[origin]} {colour} 2px;text-underline-offset:3px;"
            f"background:{colour}1f")


def origin_legend() -> str:
    """Every origin with its colour and underline style, and the end-of-text pill."""
    items = [f'<span class="tt-key" style="{_mark(origin)};padding:0 4px">{label}</span>'
             for origin, label in ORIGIN_LABELS.items()]
    items.append('<span class="tt-pill">end</span> end of text (a special token)')
    return '<div class="tt-legend">' + " ".join(items) + "</div>"


def text_html(rounds: list[RoundTrace]) -> str:
    """The written text, every token marked by origin and separated from its neighbours; click or hover a token
    for its round, probability and draft tokens."""
    spans = []
    for position, (token, origin, index, prob, sources, special) in enumerate(written_tokens(rounds)):
        note = f"round {index} · {ORIGIN_LABELS[origin]} · p={prob:.3f}"
        if sources:
            note += f" · from draft {sources}"
        attributes = (f'class="tt-token{" tt-special" if special else ""}" tabindex="0" data-round="{index}" '
                      f'data-note="{html.escape(note)}" title="{html.escape(note)}"')
        if special:  # never shown as literal text such as </s>
            spans.append(f'<span {attributes}><span class="tt-pill">end</span></span>')
        else:
            spans.append(f'<span {attributes} style="{_mark(origin)}">{html.escape(token)}</span>')
    return f'{origin_legend()}<pre class="tt-text">{"".join(spans)}</pre>'


# -- one alignment: cost matrix, path, band ---------------------------------------------------------
def _band_mask(k: int, m: int, band: int) -> np.ndarray:
    """Which cells of a round's (k, m) matrix lie inside the band the DTW used."""
    width = dtw.effective_band(k, m, band)
    return np.array([[bool(dtw.in_band(i, j, k, m, width)) for j in range(m)] for i in range(k)], dtype=bool)


def _path_legend(fig: go.Figure, tested: bool) -> None:
    """Legend entries for what the heatmap draws: the path, its dots, the shaded band."""
    entries = [("warping path", dict(mode="lines", line=dict(color=ORANGE, width=3)))]
    if tested:
        entries += [("accepted proxy", dict(mode="markers", marker=dict(color=GREEN, symbol=ACCEPTED_SYMBOL, size=9))),
                    ("rejected / untested", dict(mode="markers",
                                                 marker=dict(color=VERMILLION, symbol=REJECTED_SYMBOL, size=9)))]
    entries.append(("outside the band (not computed)",
                    dict(mode="markers", marker=dict(color="rgba(120,120,120,0.55)", symbol="square", size=11))))
    for name, style in entries:
        fig.add_trace(go.Scatter(x=[None], y=[None], name=name, hoverinfo="skip", **style))


def alignment_heatmap(draft_tokens: list[str], proxy_tokens: list[str], cost_matrix: np.ndarray,
                      warping_path: np.ndarray, band: int, accepted: int | None = None,
                      title: str = "DTW cost matrix and warping path", draft_offset: int = 0,
                      proxy_offset: int = 0, outside: np.ndarray | None = None,
                      proxy_label: str = "proxy tokens (target tokenizer)") -> go.Figure:
    """Heatmap of the local costs (draft tokens down, proxy tokens across), cells outside the band shaded grey,
    the path on top: dots for accepted proxies, crosses for rejected ones.

    ``cost_matrix`` may be a window of a larger alignment: ``draft_offset`` and ``proxy_offset`` give its first
    row and column, ``warping_path`` stays in whole-alignment indices and ``outside`` marks the cells outside the
    band (default: the band of a whole (k, m) round)."""
    k, m = cost_matrix.shape
    if k == 0 or m == 0:
        return _empty(title, "no alignment this round (nothing was proposed)", 300)
    # Unique category labels (index + token) keep repeated tokens apart and put the strings in the hover
    # without one text per cell.
    y_labels = [f"{draft_offset + i} {visible(t)}" for i, t in enumerate(draft_tokens[:k])]
    x_labels = [f"{proxy_offset + j} {visible(t)}" for j, t in enumerate(proxy_tokens[:m])]
    if outside is None:
        outside = ~_band_mask(k, m, band)
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=np.where(outside, np.nan, cost_matrix), x=x_labels, y=y_labels, colorscale="Blues",
                             reversescale=True, zmin=0, zmax=COST_SCALE_MAX, name="cost",
                             hovertemplate="draft %{y}<br>proxy %{x}<br>edit distance %{z:.0f}<extra></extra>",
                             colorbar=dict(title=dict(text="edit<br>distance"), thickness=10, len=0.8)))
    fig.add_trace(go.Heatmap(z=np.where(outside, 1.0, np.nan), x=x_labels, y=y_labels, showscale=False,
                             hoverinfo="skip", colorscale=[[0, "rgba(120,120,120,0.55)"], [1, "rgba(120,120,120,0.55)"]],
                             name="outside band"))
    inside = [(i - draft_offset, j - proxy_offset) for i, j in warping_path
              if 0 <= i - draft_offset < k and 0 <= j - proxy_offset < m]
    if accepted is None:
        colours, symbols = [ORANGE] * len(inside), [UNTESTED_SYMBOL] * len(inside)
    else:
        colours = [ACCEPTED_LINK if j < accepted else REJECTED_LINK for _, j in inside]
        symbols = [ACCEPTED_SYMBOL if j < accepted else REJECTED_SYMBOL for _, j in inside]
    fig.add_trace(go.Scatter(x=[x_labels[j] for _, j in inside], y=[y_labels[i] for i, _ in inside],
                             mode="lines+markers", name="warping path", showlegend=False, hoverinfo="skip",
                             line=dict(color=ORANGE, width=3), marker=dict(size=9, color=colours, symbol=symbols)))
    _path_legend(fig, tested=accepted is not None)
    fig.update_xaxes(title=dict(text=proxy_label, standoff=6), side="bottom", tickangle=-50,
                     type="category", automargin=True, showgrid=False)
    fig.update_yaxes(title=dict(text="draft tokens", standoff=6), autorange="reversed", type="category",
                     automargin=True, showgrid=False)
    fig.update_layout(legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, font=dict(size=11)))
    return _layout(fig, title, height=min(760, max(360, 170 + 22 * k)), bottom=44)


def round_heatmap(trace: RoundTrace | None, band: int) -> go.Figure:
    if trace is None:
        return _empty("DTW costs", "no run yet", 300)
    if trace.verifier == "tli":
        return alignment_heatmap(trace.draft_tokens, trace.proxy_tokens, trace.cost_matrix, trace.warping_path, band,
                                 trace.accepted, title=f"Round {trace.index}: tli, no re-encoding",
                                 proxy_label="intersection tokens (same bytes)")
    return alignment_heatmap(trace.draft_tokens, trace.proxy_tokens, trace.cost_matrix, trace.warping_path, band,
                             trace.accepted, title=f"Round {trace.index}: DTW costs, band {band}")


def path_overview(warping_path: np.ndarray, shape: tuple[int, int], window: tuple[int, int, int, int] | None = None,
                  title: str = "Whole warping path") -> go.Figure:
    """The full warping path as a line (no cells), with the heatmap's window outlined."""
    k, m = shape
    if not len(warping_path):
        return _empty(title, "nothing to align", 220)
    fig = go.Figure(go.Scatter(x=warping_path[:, 1], y=warping_path[:, 0], mode="lines", name="warping path",
                               line=dict(color=ORANGE, width=2),
                               hovertemplate="draft %{y} · proxy %{x}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, m - 1], y=[0, k - 1], mode="lines", name="diagonal", hoverinfo="skip",
                             line=dict(color=GREY, width=1, dash="dot")))
    if window is not None:
        d0, d1, p0, p1 = window
        fig.add_shape(type="rect", x0=p0 - 0.5, x1=p1 - 0.5, y0=d0 - 0.5, y1=d1 - 0.5,
                      line=dict(color=BLUE, width=2), fillcolor="rgba(0,114,178,0.08)")
    fig.update_xaxes(title=dict(text="proxy token", standoff=4), range=[-0.5, m - 0.5])
    fig.update_yaxes(title=dict(text="draft token", standoff=4), autorange="reversed")
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=260)


def alignment_window(alignment, draft_start: int, size: int = WINDOW) -> tuple[int, int, int, int]:
    """(draft_start, draft_stop, proxy_start, proxy_stop) of a window of at most ``size`` tokens per side, its
    proxies those the warping path aligns with its draft tokens."""
    k, m = alignment.shape
    draft_start = max(0, min(int(draft_start), max(0, k - size)))
    draft_stop = min(k, draft_start + size)
    path = alignment.warping_path
    columns = path[(path[:, 0] >= draft_start) & (path[:, 0] < draft_stop), 1]
    proxy_start = int(columns.min()) if len(columns) else 0
    proxy_stop = min(m, proxy_start + size, int(columns.max()) + 1 if len(columns) else m)
    return draft_start, draft_stop, proxy_start, proxy_stop


def window_heatmap(alignment, window: tuple[int, int, int, int]) -> go.Figure:
    """The cost heatmap of one window of a (possibly long) alignment, built from its banded costs only."""
    d0, d1, p0, p1 = window
    k, m = alignment.shape
    costs = np.asarray(alignment.cost_window(d0, d1, p0, p1), dtype=float)
    title = ("DTW costs and warping path" if (d1 - d0, p1 - p0) == (k, m) else
             f"DTW costs: draft {d0}–{d1 - 1}, proxy {p0}–{p1 - 1} of {k} × {m}")
    return alignment_heatmap(alignment.draft_tokens[d0:d1], alignment.proxy_tokens[p0:p1], costs,
                             alignment.warping_path, alignment.band, title=title, draft_offset=d0, proxy_offset=p0,
                             outside=np.isnan(costs))


def mapping_figure(draft_tokens: list[str], proxy_tokens: list[str], warping_path: np.ndarray,
                   accepted: int | None = None, title: str = "Token mapping", draft_offset: int = 0,
                   proxy_offset: int = 0, proxy_label: str = "proxy") -> go.Figure:
    """Draft tokens on the top row, proxy tokens below, one link per step of the warping path: solid for
    accepted proxies, dashed for rejected ones, grey when nothing was tested. Offsets as in the heatmap."""
    steps = [(int(i) - draft_offset, int(j) - proxy_offset) for i, j in warping_path
             if 0 <= i - draft_offset < len(draft_tokens) and 0 <= j - proxy_offset < len(proxy_tokens)]
    if not steps:
        return _empty(title, "no mapping this round", 220)
    k, m = max(i for i, _ in steps) + 1, max(j for _, j in steps) + 1
    proxy_tokens = proxy_tokens[:m]
    top, bottom = _centres(draft_tokens[:k]), _centres(proxy_tokens)

    def link_style(j):
        if accepted is None:
            return UNTESTED_LINK, "solid"
        return (ACCEPTED_LINK, "solid") if j + proxy_offset < accepted else (REJECTED_LINK, "dash")

    fig = go.Figure()
    for i, j in steps:
        colour, dash = link_style(j)
        fig.add_trace(go.Scatter(x=[top[i], bottom[j]], y=[1, 0], mode="lines",
                                 line=dict(color=colour, width=2, dash=dash), hoverinfo="skip", showlegend=False))
    for row, tokens, centres, name, offset in ((1, draft_tokens[:k], top, "draft", draft_offset),
                                               (0, proxy_tokens, bottom, proxy_label, proxy_offset)):
        colours = ["#37474f"] * len(tokens) if row else [link_style(j)[0] for j in range(len(tokens))]
        fig.add_trace(go.Scatter(x=centres, y=[row] * len(tokens), mode="markers+text", text=[visible(t) for t in tokens],
                                 textposition="top center" if row else "bottom center", name=name,
                                 marker=dict(size=10, color=colours, symbol="square"),
                                 hovertext=[f"{name} token {offset + n}: {visible(t)}" for n, t in enumerate(tokens)],
                                 hoverinfo="text", showlegend=False))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=True, tickvals=[0, 1], ticktext=[proxy_label, "draft"], range=[-0.7, 1.7],
                     showgrid=False, zeroline=False)
    return _layout(fig, title, height=240)


def round_mapping(trace: RoundTrace | None) -> go.Figure:
    if trace is None:
        return _empty("Token mapping", "no run yet", 220)
    if trace.verifier == "tli":  # drafted inside the intersection: each token maps to the one with its bytes
        return mapping_figure(trace.draft_tokens, trace.proxy_tokens, trace.warping_path, trace.accepted,
                              title=f"Round {trace.index}: {trace.accepted}/{trace.proposed} accepted (tli)",
                              proxy_label="intersection")
    return mapping_figure(trace.draft_tokens, trace.proxy_tokens, trace.warping_path, trace.accepted,
                          title=f"Round {trace.index}: {trace.accepted}/{trace.proposed} proxies accepted")


def _centres(tokens: list[str]) -> list[float]:
    """x positions proportional to token width, so long tokens take more room."""
    widths = [max(1, len(visible(t))) + 1 for t in tokens]
    return [end - w / 2 for end, w in zip(accumulate(widths), widths)]


# -- the whole run ----------------------------------------------------------------------------------
def _bottom_legend(fig: go.Figure) -> None:
    # In the figure's bottom margin, below the x axis title: neither can cover the other.
    fig.update_layout(legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", x=0, font=dict(size=11)))


def acceptance_figure(rounds: list[RoundTrace]) -> go.Figure:
    """Proposed and accepted proxies per round, with the running acceptance rate and tau."""
    index = [r.index for r in rounds]
    proposed = [r.proposed for r in rounds]
    accepted = [r.accepted for r in rounds]
    running = [a / p if p else 0.0 for a, p in zip(accumulate(accepted), accumulate(proposed))]
    tau = [n / (i + 1) for i, n in enumerate(accumulate(len(r.new_token_ids) for r in rounds))]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=index, y=proposed, name="proposed", marker_color="#c7ced3"))
    fig.add_trace(go.Bar(x=index, y=accepted, name="accepted", marker_color=GREEN))
    fig.add_trace(go.Scatter(x=index, y=running, name="acceptance rate (running)", yaxis="y2",
                             line=dict(color=ORANGE)))
    fig.add_trace(go.Scatter(x=index, y=tau, name="tau (running)", yaxis="y3", line=dict(color=PURPLE, dash="dot")))
    fig.update_layout(barmode="overlay", xaxis=dict(title=dict(text="round", standoff=4)),
                      yaxis=dict(title="proxy tokens"),
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1.05], showgrid=False, title="rate"),
                      yaxis3=dict(overlaying="y", side="right", anchor="free", autoshift=True, showgrid=False,
                                  title="tau"))
    _bottom_legend(fig)
    last_tau = tau[-1] if tau else 0.0
    last_rate = running[-1] if running else 0.0
    return _layout(fig, f"Acceptance per round — rate {last_rate:.2f}, tau {last_tau:.2f}", height=360, bottom=70)


def throughput_figure(runs: dict[str, list[RoundTrace]], compare: bool = True) -> go.Figure:
    """Tokens written over time for each run (e.g. TokenTiming and the target alone), with tokens/s; the speedup
    only when ``compare`` (both runs went to the end)."""
    fig = go.Figure()
    rates = {}
    for (name, rounds), colour in zip(runs.items(), (BLUE, PURPLE, GREEN)):
        times = [0.0] + [r.elapsed_s for r in rounds]
        tokens = [0] + [r.new_tokens_total for r in rounds]
        rates[name] = tokens[-1] / times[-1] if times[-1] > 0 else 0.0
        fig.add_trace(go.Scatter(x=times, y=tokens, mode="lines", line_shape="hv", line=dict(color=colour),
                                 name=f"{name}: {rates[name]:.1f} tok/s"))
    title = "Throughput"
    if compare and len(rates) == 2 and all(rates.values()):
        first, second = rates.values()
        title += f" — speedup {first / second:.2f}×"
    fig.update_layout(xaxis=dict(title=dict(text="seconds", standoff=4)), yaxis=dict(title="tokens written"))
    _bottom_legend(fig)
    return _layout(fig, title, height=340, bottom=60)


def doctor_figure(reports) -> go.Figure:
    """Each candidate draft's speedup over the target alone, per lossless rule, with its standard error."""
    fig = go.Figure()
    for rule, colour in (("tokentiming", "#0072B2"), ("tli", "#E69F00")):
        fig.add_trace(go.Bar(name=rule, x=[r.draft for r in reports], y=[r.speedup[rule] for r in reports],
                             marker_color=colour, error_y=dict(type="data", array=[r.speedup_error[rule]
                                                                                   for r in reports]),
                             hovertext=[f"acceptance {r.acceptance[rule]:.2f} · tau {r.tau[rule]:.2f}"
                                        for r in reports]))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="target alone", annotation_position="bottom right")
    fig.update_layout(barmode="group", yaxis_title="speedup (×)", legend=dict(orientation="h", y=-0.2))
    return _layout(fig, "Speedup vs the target alone (± s.e.)", height=360)
