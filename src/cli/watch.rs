//! `idunno job watch [ID…]`: a live terminal view of running jobs, one line per job —
//! progress bar, done/total, rate, ETA and share of worker time — redrawn every half second
//! from `GET /v1/jobs/{id}/stats` until every watched job has ended (done, stopped, deleted).

use std::collections::BTreeMap;
use std::time::Duration;

use super::outln;
use idunno_api::job::{Job, JobState, JobStats};
use idunno_api::{Client, ClientError};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_millis(500);

/// Watches `ids` (every running job if empty) until all of them have ended; prints one
/// summary line per job at the end.
pub async fn watch(client: &Client, ids: &[u64]) -> anyhow::Result<()> {
    let ids: Vec<u64> = if ids.is_empty() {
        let jobs: Vec<Job> = client.get("/v1/jobs").await?;
        jobs.into_iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| j.id)
            .collect()
    } else {
        ids.to_vec()
    };
    if ids.is_empty() {
        outln!("no running job to watch");
        return Ok(());
    }
    let view = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("job {prefix:>4} [{bar:30}] {pos:>7}/{len:7} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bars: BTreeMap<u64, ProgressBar> = ids
        .iter()
        .map(|id| {
            let bar = view.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(id.to_string());
            (*id, bar)
        })
        .collect();
    let mut last: BTreeMap<u64, Option<JobStats>> = BTreeMap::new();
    loop {
        let mut running = 0;
        for (id, bar) in &bars {
            match client
                .get::<JobStats>(&format!("/v1/jobs/{id}/stats"))
                .await
            {
                Ok(stats) => {
                    bar.set_length(stats.queries);
                    bar.set_position(stats.done);
                    bar.set_message(line(&stats));
                    if stats.state == JobState::Running {
                        running += 1;
                    }
                    last.insert(*id, Some(stats));
                }
                Err(ClientError::Api { status: 404, .. }) => {
                    bar.set_message("deleted".to_string());
                    last.insert(*id, None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if running == 0 {
            break;
        }
        tokio::time::sleep(REFRESH).await;
    }
    for bar in bars.values() {
        bar.finish();
    }
    drop(view);
    for (id, stats) in last {
        match stats {
            Some(s) => outln!("job {id}: {}/{} done, {}", s.done, s.queries, line(&s)),
            None => outln!("job {id}: deleted"),
        }
    }
    Ok(())
}

/// The figures after the bar.
fn line(s: &JobStats) -> String {
    let eta = match s.eta_s {
        Some(eta) => format!("eta {}", duration(eta)),
        None => "eta -".to_string(),
    };
    format!(
        "{:>7.1} q/s  {eta:<10}  share {:>3.0}% (fair {:>3.0}%)  {} in flight  {:?}",
        s.rate_qps,
        s.share * 100.0,
        s.fair_share * 100.0,
        s.in_flight,
        s.state
    )
    .to_lowercase()
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
fn duration(secs: f64) -> String {
    let s = secs.round().max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(59.4), "59s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
