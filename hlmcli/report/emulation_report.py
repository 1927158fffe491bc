"""The text of --emulate hlm6's record (analysis/hlm_emulation.py): HLM 5/6's emulated estimates beside the
certified optimum's, and the deviance gap between the two points."""

from __future__ import annotations


def hlm_e(x: float) -> str:
    """HLM's E format: 7 significant digits and a three-digit exponent (-1.184073E+003)."""
    mantissa, exponent = f"{x:.6E}".split("E")
    return f"{mantissa}E{exponent[0]}{int(exponent[1:]):03d}"


def emulation_lines(em: dict, sym) -> list[str]:
    """A section after the main tables: what the emulation is, its iterations and stop, and the two points."""
    g = (lambda label: label.replace("γ", "G")) if sym.ascii else (lambda label: label)
    stop = (f"stopped by HLM 6's rule {em['stop_rule']}" if em["stopped_by_rule"]
            else f"reached the iteration limit {em['iteration_limit']} before HLM 6's stop rule held")
    out = ["", f"Emulation of HLM 5/6 (--emulate hlm6, {em['method']}): {em['statement']}",
           f" Iterations: {em['iterations']}, {stop}",
           f" Log-likelihood as HLM 5/6 print it: {hlm_e(em['loglik_hlm'])}"
           + (" (ln(2π)/2 above the true log-likelihood)" if em["loglik_offset"] and not sym.ascii else
              " (ln(2pi)/2 above the true log-likelihood)" if em["loglik_offset"] else ""),
           "", f" {'':<22}{'emulated':>16}{'optimum':>16}"]
    w = out.append
    w(f" {sym.sigma2:<22}{em['sigma2']:>16.5f}{em['sigma2_optimum']:>16.5f}")
    q = len(em["tau"])
    for i in range(q):
        for j in range(i + 1):
            w(f" {sym.tau + f'{i}{j}':<22}{em['tau'][i][j]:>16.5f}{em['tau_optimum'][i][j]:>16.5f}")
    for f in em["fixed_effects"]:
        w(f" {g(f['gamma']):<22}{f['estimate']:>16.6f}{f['estimate_optimum']:>16.6f}")
        w(f" {'  s.e.':<22}{f['se']:>16.6f}{f['se_optimum']:>16.6f}")
    w(f" {'Deviance':<22}{em['deviance']:>16.6f}{em['deviance_optimum']:>16.6f}")
    w(f" Deviance gap (emulated − optimum, by hlmcli's deviance at both points): {em['deviance_gap']:.6f}"
      if not sym.ascii else
      f" Deviance gap (emulated - optimum, by hlmcli's deviance at both points): {em['deviance_gap']:.6f}")
    if em.get("note"):
        w(f" {em['note'] if not sym.ascii else em['note'].replace('σ²', 'sigma^2').replace('τ', 'tau')}")
    w(" The tables above are the certified optimum; the emulated point is not an optimum.")
    return out
