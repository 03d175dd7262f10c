"""Plotly figures and HTML built from round traces: what the app and the notebooks show.

Presentation only: nothing in the core library imports this module.
"""

from __future__ import annotations

import html
from itertools import accumulate

import numpy as np
import plotly.graph_objects as go

from ..core import dtw
from ..core.trace import BONUS, CORRECTION, TARGET, RoundTrace

#: Colours by origin of a written token.
ORIGIN_COLOURS = {"accepted": "#2e7d32", CORRECTION: "#c62828", BONUS: "#1565c0", TARGET: "#6d4c41"}
ORIGIN_LABELS = {"accepted": "accepted proxy", CORRECTION: "target correction", BONUS: "bonus token",
                 TARGET: "target alone"}
ACCEPTED_LINK, REJECTED_LINK, UNTESTED_LINK = "#2e7d32", "#c62828", "#9e9e9e"


def visible(token: str) -> str:
    """A token string with whitespace made visible (for axis labels and tables)."""
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "→").replace("\r", "⏎") or "∅"


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), template="plotly_white", hovermode="closest")
    return fig


# -- the written text -------------------------------------------------------------------------------
def written_tokens(rounds: list[RoundTrace]):
    """(token string, origin, round index, probability, draft tokens it came from) for every written token."""
    for trace in rounds:
        mapping = trace.proxy_to_draft
        for j in range(trace.accepted):
            sources = " ".join(visible(trace.draft_tokens[i]) for i in mapping[j]) if mapping else ""
            yield trace.proxy_tokens[j], "accepted", trace.index, trace.token_probs[j], sources
        yield trace.emitted_token, trace.emitted_kind, trace.index, trace.token_probs[-1], ""


def text_html(rounds: list[RoundTrace], stop_ids_text: str = "") -> str:
    """The written text, every token coloured by origin, with a hover note (round, source, probability)."""
    spans = []
    for token, origin, index, prob, sources in written_tokens(rounds):
        note = f"round {index} · {ORIGIN_LABELS[origin]} · p={prob:.3f}"
        if sources:
            note += f" · from draft {sources}"
        colour = ORIGIN_COLOURS[origin]
        spans.append(f'<span class="tt-token" title="{html.escape(note)}" style="border-bottom:2px solid {colour};'
                     f'background:{colour}1a">{html.escape(token)}</span>')
    legend = " ".join(f'<span style="border-bottom:2px solid {c};background:{c}1a;padding:0 4px">{ORIGIN_LABELS[o]}</span>'
                      for o, c in ORIGIN_COLOURS.items() if o != TARGET)
    return (f'<div class="tt-legend" style="font-size:12px;margin-bottom:6px">{legend}</div>'
            f'<pre class="tt-text" style="white-space:pre-wrap;word-break:break-word;font-size:14px;'
            f'line-height:1.6">{"".join(spans)}</pre>')


# -- one round: cost matrix, path, band -------------------------------------------------------------
def _band_mask(k: int, m: int, band: int) -> np.ndarray:
    width = max(band, abs(k - m))
    return np.array([[bool(dtw.in_band(i, j, k, m, width)) for j in range(m)] for i in range(k)])


def alignment_heatmap(draft_tokens: list[str], proxy_tokens: list[str], cost_matrix: np.ndarray,
                      warping_path: np.ndarray, band: int, accepted: int | None = None,
                      title: str = "DTW cost matrix and warping path") -> go.Figure:
    """Heatmap of the local costs (draft tokens down, proxy tokens across), the band shaded, the path on top."""
    fig = go.Figure()
    k, m = cost_matrix.shape
    if k == 0 or m == 0:
        fig.add_annotation(text="no alignment this round (nothing was proposed)", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        return _layout(fig, title)
    x_labels = [visible(t) for t in proxy_tokens]
    y_labels = [visible(t) for t in draft_tokens[:k]]
    hover = [[f"draft {y_labels[i]} · proxy {x_labels[j]} · cost {cost_matrix[i, j]:.0f}" for j in range(m)]
             for i in range(k)]
    fig.add_trace(go.Heatmap(z=cost_matrix, x=list(range(m)), y=list(range(k)), colorscale="Blues", reversescale=True,
                             text=hover, hoverinfo="text", colorbar=dict(title="edit distance", thickness=10),
                             name="cost"))
    outside = np.where(_band_mask(k, m, band), np.nan, 1.0)
    fig.add_trace(go.Heatmap(z=outside, x=list(range(m)), y=list(range(k)), showscale=False, hoverinfo="skip",
                             colorscale=[[0, "rgba(120,120,120,0.55)"], [1, "rgba(120,120,120,0.55)"]],
                             name="outside band"))
    path_colours = [ACCEPTED_LINK if accepted is None or j < accepted else REJECTED_LINK for _, j in warping_path]
    fig.add_trace(go.Scatter(x=warping_path[:, 1], y=warping_path[:, 0], mode="lines+markers", name="warping path",
                             line=dict(color="#ff8f00", width=3), marker=dict(size=9, color=path_colours),
                             hoverinfo="skip"))
    fig.update_xaxes(tickvals=list(range(m)), ticktext=x_labels, title="proxy tokens (target tokenizer)",
                     side="top", tickangle=-45)
    fig.update_yaxes(tickvals=list(range(k)), ticktext=y_labels, title="draft tokens", autorange="reversed")
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=max(320, 60 + 28 * k))


def round_heatmap(trace: RoundTrace, band: int) -> go.Figure:
    return alignment_heatmap(trace.draft_tokens, trace.proxy_tokens, trace.cost_matrix, trace.warping_path, band,
                             trace.accepted, title=f"Round {trace.index}: DTW cost matrix, band {band}, warping path")


def mapping_figure(draft_tokens: list[str], proxy_tokens: list[str], warping_path: np.ndarray,
                   accepted: int | None = None, title: str = "Token mapping") -> go.Figure:
    """Draft tokens on the top row, proxy tokens below, one link per step of the warping path."""
    fig = go.Figure()
    if not len(warping_path):
        fig.add_annotation(text="no mapping this round", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return _layout(fig, title, height=220)
    k = int(warping_path[:, 0].max()) + 1
    top, bottom = _centres(draft_tokens[:k]), _centres(proxy_tokens)
    for i, j in warping_path:
        colour = UNTESTED_LINK if accepted is None else ACCEPTED_LINK if j < accepted else REJECTED_LINK
        fig.add_trace(go.Scatter(x=[top[i], bottom[j]], y=[1, 0], mode="lines", line=dict(color=colour, width=2),
                                 hoverinfo="skip", showlegend=False))
    for row, tokens, centres, name in ((1, draft_tokens[:k], top, "draft"), (0, proxy_tokens, bottom, "proxy")):
        colours = ["#37474f"] * len(tokens) if row else [
            UNTESTED_LINK if accepted is None else ACCEPTED_LINK if j < accepted else REJECTED_LINK
            for j in range(len(tokens))]
        fig.add_trace(go.Scatter(x=centres, y=[row] * len(tokens), mode="markers+text", text=[visible(t) for t in tokens],
                                 textposition="top center" if row else "bottom center", name=name,
                                 marker=dict(size=12, color=colours, symbol="square"),
                                 hovertext=[f"{name} token {n}: {visible(t)}" for n, t in enumerate(tokens)],
                                 hoverinfo="text", showlegend=False))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=True, tickvals=[0, 1], ticktext=["proxy (target)", "draft"], range=[-0.6, 1.6],
                     showgrid=False, zeroline=False)
    return _layout(fig, title, height=240)


def round_mapping(trace: RoundTrace) -> go.Figure:
    return mapping_figure(trace.draft_tokens, trace.proxy_tokens, trace.warping_path, trace.accepted,
                          title=f"Round {trace.index}: draft → proxy mapping ({trace.accepted}/{trace.proposed} accepted)")


def _centres(tokens: list[str]) -> list[float]:
    """x positions proportional to token width, so long tokens take more room."""
    widths = [max(1, len(visible(t))) + 1 for t in tokens]
    return [end - w / 2 for end, w in zip(accumulate(widths), widths)]


# -- the whole run ----------------------------------------------------------------------------------
def acceptance_figure(rounds: list[RoundTrace]) -> go.Figure:
    """Proposed and accepted proxies per round, with the running acceptance rate and tau."""
    index = [r.index for r in rounds]
    proposed = [r.proposed for r in rounds]
    accepted = [r.accepted for r in rounds]
    running = [a / p if p else 0.0 for a, p in zip(accumulate(accepted), accumulate(proposed))]
    tau = [n / (i + 1) for i, n in enumerate(accumulate(len(r.new_token_ids) for r in rounds))]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=index, y=proposed, name="proposed", marker_color="#b0bec5"))
    fig.add_trace(go.Bar(x=index, y=accepted, name="accepted", marker_color=ACCEPTED_LINK))
    fig.add_trace(go.Scatter(x=index, y=running, name="acceptance rate (running)", yaxis="y2",
                             line=dict(color="#ff8f00")))
    fig.add_trace(go.Scatter(x=index, y=tau, name="tau (running)", yaxis="y3", line=dict(color="#6a1b9a", dash="dot")))
    fig.update_layout(barmode="overlay", xaxis=dict(title="round"), yaxis=dict(title="proxy tokens"),
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1.05], showgrid=False, title="rate"),
                      yaxis3=dict(overlaying="y", side="right", anchor="free", autoshift=True, showgrid=False,
                                  title="tau"),
                      legend=dict(orientation="h", y=-0.25))
    last_tau = tau[-1] if tau else 0.0
    last_rate = running[-1] if running else 0.0
    return _layout(fig, f"Acceptance per round — rate {last_rate:.2f}, tau {last_tau:.2f}", height=340)


def throughput_figure(runs: dict[str, list[RoundTrace]]) -> go.Figure:
    """Tokens written over time for each run (e.g. TokenTiming and the target alone), with tokens/s."""
    fig = go.Figure()
    rates = {}
    for name, rounds in runs.items():
        times = [0.0] + [r.elapsed_s for r in rounds]
        tokens = [0] + [r.new_tokens_total for r in rounds]
        rates[name] = tokens[-1] / times[-1] if times[-1] > 0 else 0.0
        fig.add_trace(go.Scatter(x=times, y=tokens, mode="lines", line_shape="hv",
                                 name=f"{name}: {rates[name]:.1f} tok/s"))
    title = "Throughput"
    if len(rates) == 2 and all(rates.values()):
        first, second = rates.values()
        title += f" — speedup {first / second:.2f}×"
    fig.update_layout(xaxis=dict(title="seconds"), yaxis=dict(title="tokens written"), legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, height=320)
