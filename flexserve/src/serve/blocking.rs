//! Blocking work (reading and checking a model file, tokenizing a prompt) runs on tokio's
//! blocking threads, which grow on demand up to 512: a burst of requests with long prompts
//! would start one each, all competing for the same two cores. So at most
//! `limits.blocking_tasks` run at once; the others wait their turn without a thread.

use super::error::ApiError;
use tokio::sync::Semaphore;

/// Runs `work` on a blocking thread once one of `permits` is free.
pub async fn bounded<T, F>(permits: &Semaphore, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let _permit = permits
        .acquire()
        .await
        .map_err(|_| ApiError::ShuttingDown)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Model(format!("the model check failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn no_more_than_the_permits_run_at_once() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let permits = Arc::new(Semaphore::new(2));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (permits, now, most) = (permits.clone(), now.clone(), most.clone());
                    tokio::spawn(async move {
                        bounded(&permits, move || {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
