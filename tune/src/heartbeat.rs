//! A running trial's heartbeat: a thread with its own storage connection refreshes the trial's heartbeat at a fixed
//! interval for as long as the trial trains, so a long epoch never looks like a dead worker; a worker that dies
//! (`kill -9`, power loss) stops beating and the next worker's heartbeat timeout marks its trial FAIL. A beat that
//! cannot reach the database (a server restarting) is retried for one interval, then at the next beat; the
//! warning says when beats fail and when they go through again.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::storage::StorageUrl;
use crate::Result;

/// How often a worker beats for a given timeout: four beats per timeout, at most every 30 s and at least every
/// 50 ms.
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

/// Beats until dropped.
pub struct Heartbeat {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Opens a connection and starts beating for trial `number` of `study` every `interval`.
    pub fn start(url: &StorageUrl, study: i64, number: u32, interval: Duration) -> Result<Self> {
        let mut storage = url.open_with_patience(interval)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("heartbeat-{number}"))
            .spawn(move || {
                let mut failing = false;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match storage.heartbeat(study, number) {
                        // Training goes on; a database that stays unreachable lets the trial time out elsewhere.
                        Err(e) if !failing => {
                            eprintln!("warning: trial {number}: heartbeat failed, retrying at each beat: {e}");
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) if failing => {
                            eprintln!("trial {number}: heartbeat restored");
                            failing = false;
                        }
                        Ok(()) => {}
                    }
                }
            })
            .expect("spawning a thread");
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Direction, TrialState};

    #[test]
    fn a_beating_trial_outlives_the_timeout_and_a_stopped_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::Sqlite(dir.path().join("s.db"));
        let mut storage = url.open().unwrap();
        let study = storage.study("s", Direction::Maximize).unwrap();
        let beating = storage.claim_trial(study, 2, "a").unwrap().unwrap();
        let silent = storage.claim_trial(study, 2, "b").unwrap().unwrap();
        let timeout = Duration::from_millis(600);
        let heartbeat = Heartbeat::start(&url, study, beating, heartbeat_interval(timeout)).unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        assert_eq!(storage.fail_stale(study, timeout).unwrap(), 1, "only the silent trial timed out");
        let trials = storage.trials(study).unwrap();
        assert_eq!(
            (trials[beating as usize].state, trials[silent as usize].state),
            (TrialState::Running, TrialState::Fail)
        );
        drop(heartbeat);
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(storage.fail_stale(study, timeout).unwrap(), 1, "stopped beating, so it times out too");
    }

    #[test]
    fn intervals_follow_the_timeout_within_bounds() {
        assert_eq!(heartbeat_interval(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(heartbeat_interval(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(heartbeat_interval(Duration::from_millis(1)), Duration::from_millis(50));
    }
}
