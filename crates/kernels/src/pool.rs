//! Running a forward pass on the rayon pool with its other workers kept awake.
//!
//! A forward pass alternates between single-threaded tensor ops and parallel matrix products,
//! hundreds of times per decoded token.  Between products rayon's idle workers go to sleep, and
//! waking one (a futex, and on a VM an interrupt to a halted virtual CPU) costs tens of
//! microseconds: on a 2-core VM the kernel's wake-up paths took 7 % of decoding.  While a pass
//! runs, the other workers poll for work instead, as llama.cpp's threads do.  Running the pass
//! itself on a worker also keeps AMX tile state among threads that all use it (Linux enables
//! it per thread; switching it in and out cost the audio tower a third of its time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A polling worker that has found nothing to do for this long goes back to sleep.  This bounds
/// the delay should a worker start polling inside a job it must return to (rayon may run a
/// queued job while it waits), and frees the cores after a pass that stopped using them.
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// Runs `f` on a rayon worker while the pool's other workers poll for work.  From inside the
/// pool it just runs `f`.
pub fn busy<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| poll_until(done, owner));
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

/// Runs queued pool work as it appears until `done`, or until idle for [`IDLE_LIMIT`].  Returns
/// at once on the thread running the pass, which may pick this job up while it waits.
fn poll_until(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last_work = Instant::now(),
            _ if last_work.elapsed() > IDLE_LIMIT => return,
            _ => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn passes_run_their_parallel_work_and_return() {
        for round in 0..200u64 {
            let sum = busy(|| {
                (0..10_000u64)
                    .into_par_iter()
                    .map(|v| v * round)
                    .sum::<u64>()
            });
            assert_eq!(sum, round * 10_000 * 9_999 / 2);
        }
        // Nested passes run in place.
        assert!(busy(|| busy(|| rayon::current_thread_index().is_some())));
    }
}
