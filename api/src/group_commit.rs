//! Group commit: concurrent requests that write the same kind of row hand their work to
//! one task, which writes whatever has queued up in one statement and one commit.
//!
//! Under load PostgreSQL's cost per request is mostly per statement and per commit
//! (executor start-up, trigger and foreign-key queries, the commit record), not per row,
//! so N rows in one statement cost far less than N statements. At low load nothing waits:
//! a lone request is written at once, in a batch of one. Batches form only while
//! `in_flight` of them are already being written, from what arrived meanwhile.
//!
//! The guarantees a handler relies on stay its own:
//! - it answers only after its reply arrives, and a writer replies only after the commit
//!   holding that row (or with the row's own error);
//! - a writer isolates failures: when a batch fails, it writes each of its rows on its own,
//!   so one bad row never fails its neighbours (see the writers in `orders::intake`);
//! - a writer that panics drops its replies: those requests get a 500, nothing else does.

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Requests queued beyond this wait for room (backpressure, bounded memory).
const QUEUE: usize = 4096;

/// One kind of grouped write: items of type `I` in, one `O` per item out.
pub struct GroupCommit<I, O> {
    queue: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the task that forms batches of at most `max_batch` items and runs at most
    /// `in_flight` of them at once through `write`, which must return exactly one output
    /// per item, in the order given.
    pub fn start<W, F>(name: &'static str, max_batch: usize, in_flight: usize, write: W) -> Self
    where
        W: Fn(Vec<I>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(
            name,
            rx,
            max_batch.max(1),
            in_flight.max(1),
            write,
        ));
        Self { queue }
    }

    /// Queues `item` and waits for its own result; an internal error if its batch's
    /// writer failed without answering (a panic).
    pub async fn submit(&self, item: I) -> ApiResult<O> {
        let (reply, answer) = oneshot::channel();
        let unanswered = || ApiError::Internal("a grouped request ended without an answer".into());
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| unanswered())?;
        answer.await.map_err(|_| unanswered())
    }
}

async fn dispatch<I, O, W, F>(
    name: &'static str,
    mut rx: mpsc::Receiver<(I, oneshot::Sender<O>)>,
    max_batch: usize,
    in_flight: usize,
    write: W,
) where
    I: Send + 'static,
    O: Send + 'static,
    W: Fn(Vec<I>) -> F + Send + Sync + 'static,
    F: Future<Output = Vec<O>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets a batch grow.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
        let size = items.len();
        autokey_shared::metrics::group_size(name, size);
        let written = write(items);
        tokio::spawn(async move {
            let outputs = written.await;
            drop(slot);
            if outputs.len() != size {
                tracing::error!(
                    group = name,
                    expected = size,
                    got = outputs.len(),
                    "a group commit answered the wrong number of items; failing the batch"
                );
                return;
            }
            for (reply, output) in replies.into_iter().zip(outputs) {
                // The request may be gone (its client left): its row is written anyway,
                // as it would be without grouping.
                let _ = reply.send(output);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn each_item_gets_its_own_output_and_batches_form_under_load() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let doubler = GroupCommit::start("test", 16, 1, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        });
        let mut waiting = tokio::task::JoinSet::new();
        for i in 0..64u32 {
            let d = doubler.clone();
            waiting.spawn(async move { (i, d.submit(i).await.ok()) });
        }
        while let Some(done) = waiting.join_next().await {
            let (i, out) = done.unwrap();
            assert_eq!(out, Some(i * 2));
        }
        let n = batches.load(Ordering::Relaxed);
        assert!(
            n < 64,
            "64 concurrent items took {n} batches: nothing was grouped"
        );
        assert!(
            n >= 4,
            "a batch holds at most 16 items, yet 64 took {n} batches"
        );
    }

    #[tokio::test]
    async fn a_writer_that_panics_fails_only_its_own_batch() {
        let writer = GroupCommit::start("test", 1, 1, |items: Vec<u32>| async move {
            assert!(items[0] != 13, "unlucky");
            items
        });
        assert_eq!(writer.submit(13).await.ok(), None);
        assert_eq!(writer.submit(14).await.ok(), Some(14));
    }
}
