"""Human renderings of a ParallelPlan: a text table and an SVG of stages x EP ranks."""

from __future__ import annotations

from html import escape

from megatron_ads.layout.memory import GB


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "-"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def table(plan) -> str:
    """Text table: header with sizes and totals, one row per stage, traffic summary, explanation."""
    t = plan.traffic
    lines = [
        f"layout: tp={plan.tp} pp={plan.pp} ep={plan.ep} dp={plan.dp} expert_dp={plan.expert_dp} "
        f"world={plan.world_size} ({plan.nodes} nodes x {plan.gpus_per_node} GPUs, {plan.gpu_mem_gb:g} GB)",
        f"model: {plan.model_type}, {plan.total_params / 1e9:.2f} B params ({plan.active_params / 1e9:.2f} B active"
        f"{f', MTP {plan.mtp_params / 1e9:.2f} B' if plan.mtp_params else ''}); seq {plan.seq_len} x mb {plan.micro_batch}, "
        f"{plan.num_microbatches} micro-batches/step, recompute {plan.recompute}, "
        f"{'distributed' if plan.distributed_optimizer else 'replicated'} optimizer",
        "",
        f"{'stage':>5} {'layers':>9} {'moe':>9} {'emb':>3} {'out':>3} {'mtp':>3} {'params/rank':>12} {'mem GB':>7}",
    ]
    for s in plan.stages:
        lines.append(f"{s.index:>5} {_ranges(s.layers):>9} {_ranges(s.moe_layers):>9} {'x' if s.has_embedding else '':>3} "
                     f"{'x' if s.has_output else '':>3} {'x' if s.has_mtp else '':>3} {s.params / 1e9:>10.2f} B "
                     f"{s.memory_gb:>7.1f}")
    if plan.experts:
        lines.append("")
        lines.append("experts: " + "  ".join(f"ep{e['ep_rank']}:{e['first']}-{e['last']}" for e in plan.experts))
    if plan.dense_only_stages:
        lines.append(f"dense-only stages (stub MoE optimizer): {_ranges(plan.dense_only_stages)}")
    lines += [
        "",
        f"traffic per step, busiest rank {t['busiest_rank']}: "
        f"EP a2a {t['ep_all_to_all_bytes_per_step']['intra_node'] / GB:.1f} GB intra / "
        f"{t['ep_all_to_all_bytes_per_step']['inter_node'] / GB:.1f} GB inter; "
        f"PP p2p {t['pp_p2p_bytes_per_step']['intra_node'] / GB:.2f} / {t['pp_p2p_bytes_per_step']['inter_node'] / GB:.2f} GB; "
        f"DP grads {t['dp_grad_bytes_per_step']['intra_node'] / GB:.2f} / {t['dp_grad_bytes_per_step']['inter_node'] / GB:.2f} GB",
        f"peak memory {plan.max_memory_gb:.1f} GB of {plan.gpu_mem_gb:g} GB -> {'fits' if plan.fits else 'DOES NOT FIT'}",
    ]
    lines += [f"- {e}" for e in plan.explanation]
    return "\n".join(lines)


def svg(plan) -> str:
    """An SVG grid: one row per pipeline stage, one column per EP rank, labelled with layers and experts."""
    cols = max(plan.ep, 1)
    cw, rh, left, top = 130, 34, 150, 40
    width, height = left + cols * cw + 20, top + plan.pp * rh + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
             f'font-size="11">',
             f'<text x="10" y="20" font-size="13">tp={plan.tp} pp={plan.pp} ep={plan.ep} dp={plan.dp} '
             f'world={plan.world_size}</text>']
    for c in range(cols):
        label = (f"EP{c}: e{plan.experts[c]['first']}-{plan.experts[c]['last']}" if plan.experts else f"rank col {c}")
        parts.append(f'<text x="{left + c * cw + 4}" y="{top - 6}">{escape(label)}</text>')
    for s in plan.stages:
        y = top + s.index * rh
        extras = ("emb " if s.has_embedding else "") + ("out " if s.has_output else "") + ("mtp" if s.has_mtp else "")
        parts.append(f'<text x="6" y="{y + 21}">stage {s.index} L{_ranges(s.layers)} {escape(extras)}</text>')
        dense = not s.moe_layers
        for c in range(cols):
            fill = "#dbe9f6" if dense else "#f6e3cf"
            parts.append(f'<rect x="{left + c * cw}" y="{y}" width="{cw - 4}" height="{rh - 4}" fill="{fill}" '
                         f'stroke="#555"/>')
            text = f"dense {s.memory_gb:.0f}GB" if dense else f"MoE x{len(s.moe_layers)} {s.memory_gb:.0f}GB"
            parts.append(f'<text x="{left + c * cw + 6}" y="{y + 20}">{escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
