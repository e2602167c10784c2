//! Keeping rayon's other workers awake through a training step.
//!
//! A step alternates hundreds of short parallel kernels with candle's serial
//! ops. Between two kernels rayon puts its idle workers to sleep after a few
//! dozen yields, and waking one costs a system call and an inter-processor
//! interrupt, so on few cores every kernel started with one thread. OpenMP
//! (PyTorch's threads) spins instead; [`with_spinning_workers`] does the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a worker spins without finding work before it goes back to
/// rayon's own idling (longer than almost every serial stretch of a step).
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// Workers in a spinning loop now (for tests: each loop must end).
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` while every other worker of the current rayon pool busy-waits for
/// work, stealing what `f` forks as soon as it is forked, instead of sleeping.
/// Outside a pool, or in a pool of one thread, just runs `f`. Results do not
/// depend on it (only when the work runs, not how it is split).
pub fn with_spinning_workers<R>(f: impl FnOnce() -> R) -> R {
    let Some(owner) = rayon::current_thread_index() else {
        return f();
    };
    if rayon::current_num_threads() < 2 {
        return f();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    // One job per worker, each in that worker's own queue: the owner's
    // returns at once (if it ran this loop, it would never return to `f`).
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == owner {
            return;
        }
        SPINNING.fetch_add(1, Ordering::Relaxed);
        let mut last_work = Instant::now();
        while !stopped.load(Ordering::Acquire) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => last_work = Instant::now(),
                Some(rayon::Yield::Idle) if last_work.elapsed() < IDLE_LIMIT => {
                    std::hint::spin_loop()
                }
                // Idle for long: this loop may run inside one of the step's
                // own jobs (a worker runs queued jobs while it waits for a
                // job's other half), which cannot finish before it returns.
                Some(rayon::Yield::Idle) | None => break,
            }
        }
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    });
    /// Stops the spinning when `f` returns or unwinds.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop = StopOnDrop(stop);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// Runs `work` on a thread of its own and fails if it takes longer than
    /// `limit`: a deadlock fails the test instead of hanging it.
    fn within(limit: Duration, what: &str, work: impl FnOnce() + Send + 'static) {
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            work();
            done_tx.send(()).unwrap();
        });
        match done_rx.recv_timeout(limit) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what}: not done in {limit:?}, a deadlock")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
        }
    }

    fn sum_and_threads(n: usize) -> (usize, HashSet<usize>) {
        let seen = Mutex::new(HashSet::new());
        let sum = (0..n)
            .into_par_iter()
            .with_max_len(n / 100)
            .map(|i| {
                if let Some(t) = rayon::current_thread_index() {
                    seen.lock().unwrap().insert(t);
                }
                i
            })
            .sum();
        (sum, seen.into_inner().unwrap())
    }

    /// Every spinning loop has ended, or ends within a few seconds.
    fn spinning_ends() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while SPINNING.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "workers still spinning");
            std::thread::yield_now();
        }
    }

    #[test]
    fn work_inside_runs_on_the_pool_and_the_spinning_stops() {
        within(
            Duration::from_secs(120),
            "steps in pools of 1 and 3",
            || {
                let want = 200_000 * 199_999 / 2;
                // Outside any pool, and in pools of one and three threads.
                assert_eq!(with_spinning_workers(|| sum_and_threads(200_000)).0, want);
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for _ in 0..3 {
                        let (sum, seen) =
                            pool.install(|| with_spinning_workers(|| sum_and_threads(200_000)));
                        assert_eq!(sum, want);
                        assert!(seen.iter().all(|&t| t < threads), "{seen:?}");
                    }
                    // A panic inside stops the spinning too.
                    let caught = pool.install(|| {
                        std::panic::catch_unwind(|| with_spinning_workers(|| panic!("inside")))
                    });
                    assert!(caught.is_err());
                }
                spinning_ends();
            },
        );
    }

    /// Back-to-back steps of nested parallel work, on a machine kept busy by
    /// two more threads: a worker that loses its core at the wrong moment
    /// meets the next step's spinning loop while it waits inside one of that
    /// step's jobs (a worker runs queued jobs while it waits). Spinning
    /// without an end hung here about once in fifteen runs of 3,000 steps.
    #[test]
    fn back_to_back_steps_do_not_hang() {
        let hogs_stop = Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                let stop = Arc::clone(&hogs_stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let steps = || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| {
                for _ in 0..3000 {
                    let (a, b) = with_spinning_workers(|| {
                        // Serial work first, as a training step prepares its batch.
                        let t0 = Instant::now();
                        while t0.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                        rayon::join(|| sum_and_threads(4_000).0, || sum_and_threads(4_000).0)
                    });
                    assert_eq!((a, b), (4_000 * 3_999 / 2, 4_000 * 3_999 / 2));
                }
            });
            spinning_ends();
        };
        let outcome = std::panic::catch_unwind(|| {
            within(Duration::from_secs(120), "3,000 back-to-back steps", steps)
        });
        hogs_stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            hog.join().unwrap();
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
