"""The text of `hlmcli explain`: HLM's numbers beside the certified fit's, and the findings."""

from __future__ import annotations


def _g(x, fmt: str = "{:.6f}") -> str:
    return "" if x is None else fmt.format(x)


def explain_text(r: dict) -> str:
    lines = [f"HLM {r.get('hlm_version') or '(version not printed)'} output {r['hlm_output']} against the certified fit {r['fit']}",
             f"  HLM: {r.get('hlm_method') or '?'}, {r.get('hlm_iterations') or '?'} iterations; "
             f"fit: {r.get('fit_method')}", ""]
    if "deviance_at_hlm_estimates" in r:
        lines += ["Deviance (the fit's likelihood)",
                  f"  at the certified optimum          {r['deviance_optimum']:.6f}",
                  f"  at HLM's printed σ2 and τ          {r['deviance_at_hlm_estimates']:.6f}",
                  f"  gap                               {r['deviance_gap']:.6f}"
                  f"   (printing to 5 decimals alone moves it by {r['printing_precision']:.2g})"]
        if "hlm_printed_deviance" in r:
            lines.append(f"  HLM's printed deviance            {r['hlm_printed_deviance']:.6f}"
                         f"   (printed − evaluated: {r['printed_minus_evaluated']:.6f})")
        lines.append("")
    if r.get("fixed_effects"):
        lines += ["Fixed effects", f"  {'':8}{'HLM':>14}{'fit':>14}{'diff/SE':>10}{'HLM SE':>12}{'fit SE':>12}{'SE rel.':>10}"
                  f"{'HLM d.f.':>10}{'fit d.f.':>10}"]
        for f in r["fixed_effects"]:
            lines.append(f"  {f['gamma']:8}{f['hlm']:>14.6f}{f['fit']:>14.6f}{f['difference_in_se']:>10.3f}"
                         f"{f['hlm_se']:>12.6f}{f['fit_se']:>12.6f}{f['se_relative']:>10.2%}"
                         f"{_g(f['hlm_df'], '{:.0f}'):>10}{_g(f['fit_df'], '{}'):>10}"
                         + ("   (robust SEs: HLM's output has no model-based table)" if f.get("se_kind") == "robust" else ""))
        lines.append("")
    if r.get("tau"):
        lines += ["Variance components", f"  {'':28}{'HLM':>14}{'fit':>14}{'relative':>10}"]
        for t in r["tau"]:
            lines.append(f"  {t['entry']:28}{t['hlm']:>14.5f}{t['fit']:>14.5f}{t['relative']:>10.2%}")
        lines.append("")
    lines.append("Findings")
    lines += [f"  - {f}" for f in r["findings"]]
    return "\n".join(lines)
