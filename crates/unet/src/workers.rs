//! Keeping rayon's other workers awake through a training step.
//!
//! A step alternates hundreds of short parallel kernels with candle's serial
//! ops. Between two kernels rayon puts its idle workers to sleep after a few
//! dozen yields, and waking one costs a system call and an inter-processor
//! interrupt, so on few cores every kernel started with one thread. OpenMP
//! (PyTorch's threads) spins instead; [`with_spinning_workers`] does the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
        while !stopped.load(Ordering::Acquire) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => {}
                Some(rayon::Yield::Idle) => std::hint::spin_loop(),
                None => break,
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

    fn sum_and_threads() -> (usize, HashSet<usize>) {
        let seen = Mutex::new(HashSet::new());
        let sum = (0..200_000usize)
            .into_par_iter()
            .with_max_len(1_000)
            .map(|i| {
                if let Some(t) = rayon::current_thread_index() {
                    seen.lock().unwrap().insert(t);
                }
                i
            })
            .sum();
        (sum, seen.into_inner().unwrap())
    }

    #[test]
    fn work_inside_runs_on_the_pool_and_the_spinning_stops() {
        let want = 200_000usize * 199_999 / 2;
        // Outside any pool, and in pools of one and three threads.
        assert_eq!(with_spinning_workers(sum_and_threads).0, want);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for _ in 0..3 {
                let (sum, seen) = pool.install(|| with_spinning_workers(sum_and_threads));
                assert_eq!(sum, want);
                assert!(seen.iter().all(|&t| t < threads), "{seen:?}");
            }
            // A panic inside stops the spinning too.
            let caught = pool.install(|| {
                std::panic::catch_unwind(|| with_spinning_workers(|| panic!("inside")))
            });
            assert!(caught.is_err());
        }
        // Every spinning loop ends once its step is over.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while SPINNING.load(Ordering::Relaxed) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "workers still spinning"
            );
            std::thread::yield_now();
        }
    }
}
