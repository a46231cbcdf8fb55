//! Goodput under several SLOs at once, defined as `vllm bench serve --goodput ttft:MS tpot:MS
//! e2el:MS` defines it (vLLM's `calculate_metrics`, the DistServe definition):
//!
//! - only **successful** requests can be good; a failed request never is (it still counts in
//!   the attainment's denominator here, see [`Goodput::attainment`]);
//! - a request is good when **every** objective given holds, each inclusively (`value ≤ SLO`);
//! - **TTFT** is the time to the first token-bearing chunk;
//! - **TPOT** is `(latency − TTFT) / (output_tokens − 1)`, and **0 for a request of one output
//!   token** (vLLM's "we regard tpot as 0 for goodput"), so such a request meets any TPOT
//!   objective;
//! - **e2el** (vLLM's `latency`) ends at the last token-bearing chunk (`TTFT + Σ ITL`), not at
//!   the `[DONE]` / usage trailer that our report's `e2e_s` waits for;
//! - **goodput** is good requests divided by the run's (or window's) duration, in requests per
//!   second.
//!
//! The flags take durations (`--slo-ttft 500ms`), not vLLM's bare milliseconds; the report keeps
//! seconds. One difference remains by design: in open-loop runs our latencies count from each
//! request's *intended* start (coordinated omission is charged to the client), while vLLM's
//! count from the actual send; with a generator that keeps up the two agree.

use std::time::Duration;

use anyhow::bail;

use super::engine::Sample;
use super::knee::Slo;
use crate::units::parse_duration;

/// The SLO flags `bench` and `sweep` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SloArgs {
    /// SLO on time to first token (e.g. 500ms); vLLM's `--goodput ttft:MS`.
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_TTFT")]
    pub slo_ttft: Option<Duration>,
    /// SLO on time per output token after the first (e.g. 50ms); vLLM's `--goodput tpot:MS`.
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_TPOT")]
    pub slo_tpot: Option<Duration>,
    /// SLO on end-to-end latency to the last token (e.g. 10s); vLLM's `--goodput e2el:MS`.
    #[arg(long, value_parser = parse_duration, env = "VLLM_SENTINEL_SLO_E2E")]
    pub slo_e2e: Option<Duration>,
    /// Share of the requests (failures included) that must meet every SLO.
    #[arg(long, default_value_t = 0.9, env = "VLLM_SENTINEL_SLO_ATTAINMENT")]
    pub slo_attainment: f64,
}

impl SloArgs {
    /// The objectives, in seconds.
    pub fn slo(&self) -> Slo {
        Slo {
            ttft_s: self.slo_ttft.map(|d| d.as_secs_f64()),
            tpot_s: self.slo_tpot.map(|d| d.as_secs_f64()),
            e2e_s: self.slo_e2e.map(|d| d.as_secs_f64()),
        }
    }

    /// Checks `--slo-attainment`.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.slo_attainment) {
            bail!(
                "--slo-attainment: {} is not a share between 0 and 1",
                self.slo_attainment
            );
        }
        Ok(())
    }
}

/// vLLM's `latency` of one request: the time to its last token-bearing chunk, `TTFT + Σ ITL`
/// for a streamed answer; the end-to-end latency otherwise (a non-streamed answer arrives whole).
pub fn vllm_latency(s: &Sample) -> f64 {
    match s.ttft_s {
        Some(ttft) => ttft + s.itl_s.iter().sum::<f64>(),
        None => s.e2e_s,
    }
}

/// vLLM's per-request TPOT as its goodput judges it: `(latency − TTFT) / (output_tokens − 1)`,
/// and 0 for one output token (or an unknown count). `None` without a TTFT (not streamed).
pub fn vllm_tpot(s: &Sample) -> Option<f64> {
    let ttft = s.ttft_s?;
    Some(match s.output_tokens {
        Some(n) if n > 1 => (vllm_latency(s) - ttft).max(0.0) / f64::from(n - 1),
        _ => 0.0,
    })
}

/// Whether `s` is a good request under `slo` (see the module documentation). With no
/// objective set every successful request is good.
pub fn is_good(slo: &Slo, s: &Sample) -> bool {
    if !s.ok() {
        return false;
    }
    let within = |limit: Option<f64>, v: Option<f64>| match (limit, v) {
        (None, _) => true,
        (Some(l), Some(v)) => v <= l,
        (Some(_), None) => false,
    };
    within(slo.ttft_s, s.ttft_s)
        && within(slo.tpot_s, vllm_tpot(s))
        && within(slo.e2e_s, Some(vllm_latency(s)))
}

/// The goodput figures of a set of requests over a duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goodput {
    /// Requests judged (successes and failures).
    pub judged: usize,
    /// Good requests among them.
    pub good: usize,
    /// `good / judged`, 0 when nothing was judged: the share of requests, failures included,
    /// that met every objective.
    pub attainment: f64,
    /// `good / duration_s` (vLLM's `request_goodput`), 0 for a zero duration.
    pub goodput_rps: f64,
}

impl Goodput {
    /// Judges `samples`, sent over `duration_s` seconds.
    pub fn of<'a>(
        slo: &Slo,
        samples: impl IntoIterator<Item = &'a Sample>,
        duration_s: f64,
    ) -> Self {
        let (mut judged, mut good) = (0usize, 0usize);
        for s in samples {
            judged += 1;
            good += usize::from(is_good(slo, s));
        }
        Self {
            judged,
            good,
            attainment: if judged == 0 {
                0.0
            } else {
                good as f64 / judged as f64
            },
            goodput_rps: if duration_s > 0.0 {
                good as f64 / duration_s
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::engine::Outcome;

    fn streamed(ttft: f64, itl: &[f64], tokens: u32) -> Sample {
        Sample {
            ttft_s: Some(ttft),
            itl_s: itl.to_vec(),
            // the [DONE] trailer comes 50 ms after the last token
            e2e_s: ttft + itl.iter().sum::<f64>() + 0.05,
            output_tokens: Some(tokens),
            ..Sample::default()
        }
    }

    fn slo(ttft: Option<f64>, tpot: Option<f64>, e2e: Option<f64>) -> Slo {
        Slo {
            ttft_s: ttft,
            tpot_s: tpot,
            e2e_s: e2e,
        }
    }

    #[test]
    fn latency_and_tpot_as_vllm_computes_them() {
        let s = streamed(0.1, &[0.02, 0.04], 3);
        assert!(
            (vllm_latency(&s) - 0.16).abs() < 1e-12,
            "ends at the last token"
        );
        assert!((vllm_tpot(&s).unwrap() - 0.03).abs() < 1e-12);
        let one = streamed(0.1, &[], 1);
        assert_eq!(vllm_tpot(&one), Some(0.0), "one output token: TPOT 0");
        let whole = Sample {
            e2e_s: 0.7,
            output_tokens: Some(5),
            ..Sample::default()
        };
        assert_eq!(vllm_latency(&whole), 0.7);
        assert_eq!(vllm_tpot(&whole), None);
    }

    #[test]
    fn every_objective_must_hold_inclusively() {
        let s = streamed(0.1, &[0.02, 0.04], 3); // tpot 0.03, latency 0.16
        assert!(
            is_good(&slo(Some(0.1), Some(0.03), Some(0.16)), &s),
            "≤, not <"
        );
        assert!(!is_good(&slo(Some(0.09), None, None), &s));
        assert!(!is_good(&slo(None, Some(0.029), None), &s));
        assert!(!is_good(&slo(None, None, Some(0.159)), &s));
        assert!(
            is_good(&slo(None, None, Some(0.17)), &s),
            "e2el ends at the last token, not the trailer 50 ms later"
        );
        assert!(is_good(&Slo::default(), &s));
        let one = streamed(0.1, &[], 1);
        assert!(is_good(&slo(None, Some(0.0), None), &one));
    }

    #[test]
    fn failures_are_never_good_but_are_judged() {
        let bad = Sample::failed(Outcome::ServerError, "boom");
        assert!(!is_good(&Slo::default(), &bad));
        let ok = streamed(0.1, &[0.01], 2);
        let slow = streamed(0.9, &[0.01], 2);
        let g = Goodput::of(&slo(Some(0.5), None, None), [&ok, &bad, &slow, &ok], 2.0);
        assert_eq!((g.judged, g.good), (4, 2));
        assert_eq!(g.attainment, 0.5);
        assert_eq!(g.goodput_rps, 1.0);
        let none = Goodput::of(&Slo::default(), [], 0.0);
        assert_eq!((none.attainment, none.goodput_rps), (0.0, 0.0));
    }

    #[test]
    fn non_streamed_requests_fail_a_ttft_objective() {
        let whole = Sample {
            e2e_s: 0.2,
            output_tokens: Some(5),
            ..Sample::default()
        };
        assert!(!is_good(&slo(Some(1.0), None, None), &whole));
        assert!(!is_good(&slo(None, Some(1.0), None), &whole));
        assert!(is_good(&slo(None, None, Some(1.0)), &whole));
    }
}
