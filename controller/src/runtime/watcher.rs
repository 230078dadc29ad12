//! List, then watch from the list's revision, as an explicit state
//! machine advanced by one `step` function and turned into a stream with
//! `unfold` (the shape of kube-runtime's watcher).
//!
//! `Empty` --list--> `Listed{rv}` --watch(rv)--> `Watching{rv, stream}`;
//! a stream that ends or breaks goes back to `Listed{rv}` (resume from the
//! last revision seen), a 410 back to `Empty` (relist). Errors are yielded
//! so the caller can log them; the next attempt waits out a backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::Stream;
use futures_util::StreamExt;

use super::backoff::Backoff;
use super::{EventStream, Resource, Source, SourceError, WatchEvent};

/// What the watcher tells its consumer.
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// A (re)list: this is now every object there is.
    Restarted(Vec<K>),
    /// Created or changed.
    Applied(K),
    Deleted(K),
}

enum State<K> {
    Empty,
    Listed { rv: String },
    Watching { rv: String, stream: EventStream<K> },
}

struct Machine<K, S> {
    source: Arc<S>,
    state: State<K>,
    backoff: Backoff,
    /// Wait this long before the next attempt (after an error).
    pause: Option<Duration>,
}

/// Advances the machine until it has something to say.
async fn step<K: Resource, S: Source<K>>(mut m: Machine<K, S>) -> Option<(Result<Event<K>, SourceError>, Machine<K, S>)> {
    loop {
        if let Some(d) = m.pause.take() {
            tokio::time::sleep(d).await;
        }
        match std::mem::replace(&mut m.state, State::Empty) {
            State::Empty => match m.source.list().await {
                Ok((items, rv)) => {
                    m.backoff.reset();
                    m.state = State::Listed { rv };
                    return Some((Ok(Event::Restarted(items)), m));
                }
                Err(e) => {
                    m.pause = Some(m.backoff.next_delay());
                    return Some((Err(e), m));
                }
            },
            State::Listed { rv } => match m.source.watch(&rv).await {
                Ok(stream) => m.state = State::Watching { rv, stream },
                Err(e) => {
                    m.state = State::Listed { rv };
                    m.pause = Some(m.backoff.next_delay());
                    return Some((Err(e), m));
                }
            },
            State::Watching { rv, mut stream } => match stream.next().await {
                Some(Ok(WatchEvent::Added(k) | WatchEvent::Modified(k))) => {
                    m.backoff.reset();
                    m.state = State::Watching { rv: k.meta().resource_version.clone(), stream };
                    return Some((Ok(Event::Applied(k)), m));
                }
                Some(Ok(WatchEvent::Deleted(k))) => {
                    m.backoff.reset();
                    m.state = State::Watching { rv: k.meta().resource_version.clone(), stream };
                    return Some((Ok(Event::Deleted(k)), m));
                }
                Some(Ok(WatchEvent::Bookmark(new_rv))) => m.state = State::Watching { rv: new_rv, stream },
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    // History is gone: relist (immediately; it is not a failure).
                    return Some((Err(SourceError::Gone(status.message)), m));
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    m.state = State::Listed { rv };
                    m.pause = Some(m.backoff.next_delay());
                    return Some((Err(SourceError::Api(status.message)), m));
                }
                Some(Err(SourceError::Gone(msg))) => return Some((Err(SourceError::Gone(msg)), m)),
                Some(Err(e)) => {
                    m.state = State::Listed { rv };
                    m.pause = Some(m.backoff.next_delay());
                    return Some((Err(e), m));
                }
                // The server ended the watch (timeout, restart): resume.
                None => m.state = State::Listed { rv },
            },
        }
    }
}

/// A never-ending stream of watcher events for `source`, with `backoff`
/// between failed attempts.
pub fn watcher<K: Resource, S: Source<K>>(source: Arc<S>, backoff: Backoff) -> impl Stream<Item = Result<Event<K>, SourceError>> + Send {
    let m = Machine { source, state: State::Empty, backoff, pause: None };
    futures_util::stream::unfold(m, step)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use steward_schema::{Container, Status};

    use super::*;

    pub fn obj(name: &str, rv: &str) -> Container {
        let mut c = Container::default();
        c.metadata.namespace = "default".into();
        c.metadata.name = name.into();
        c.metadata.resource_version = rv.into();
        c
    }

    type ListAnswer = Result<(Vec<Container>, String), SourceError>;
    type WatchAnswer = Result<Vec<Result<WatchEvent<Container>, SourceError>>, SourceError>;

    /// A scripted source: each list / watch call takes the next answer.
    #[derive(Default)]
    pub struct Scripted {
        pub lists: Mutex<VecDeque<ListAnswer>>,
        pub watches: Mutex<VecDeque<WatchAnswer>>,
        pub calls: Mutex<Vec<String>>,
    }

    impl Source<Container> for Scripted {
        fn list(&self) -> BoxFuture<'_, Result<(Vec<Container>, String), SourceError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push("list".into());
                let next = self.lists.lock().unwrap().pop_front();
                match next {
                    Some(r) => r,
                    None => futures_util::future::pending().await,
                }
            })
        }
        fn watch(&self, rv: &str) -> BoxFuture<'_, Result<EventStream<Container>, SourceError>> {
            let rv = rv.to_string();
            Box::pin(async move {
                self.calls.lock().unwrap().push(format!("watch {rv}"));
                let next = self.watches.lock().unwrap().pop_front();
                match next {
                    Some(Ok(events)) => Ok(futures_util::stream::iter(events).boxed()),
                    Some(Err(e)) => Err(e),
                    None => futures_util::future::pending().await,
                }
            })
        }
    }

    fn gone() -> WatchEvent<Container> {
        WatchEvent::Error(Status::failure(410, "Expired", "too old"))
    }

    #[tokio::test(start_paused = true)]
    async fn lists_watches_resumes_and_relists_on_gone() {
        let s = Arc::new(Scripted::default());
        s.lists.lock().unwrap().extend([Ok((vec![obj("a", "3")], "5".to_string())), Ok((vec![obj("b", "9")], "9".to_string()))]);
        s.watches.lock().unwrap().extend([
            // First watch: one change, a bookmark, then the stream ends.
            Ok(vec![Ok(WatchEvent::Modified(obj("a", "6"))), Ok(WatchEvent::Bookmark("7".into()))]),
            // Resumed from the bookmark: a transport error.
            Err(SourceError::Transport("connection refused".into())),
            // Retried (after backoff): 410, so relist.
            Ok(vec![Ok(WatchEvent::Deleted(obj("a", "8"))), Ok(gone())]),
        ]);
        let mut w = Box::pin(watcher(s.clone(), Backoff::new(Duration::from_millis(10), Duration::from_secs(1))));
        let names = |v: &Vec<Container>| v.iter().map(|c| c.metadata.name.clone()).collect::<Vec<_>>();
        match w.next().await.unwrap() {
            Ok(Event::Restarted(v)) => assert_eq!(names(&v), ["a"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.next().await.unwrap(), Ok(Event::Applied(c)) if c.metadata.resource_version == "6"));
        assert!(matches!(w.next().await.unwrap(), Err(SourceError::Transport(_))));
        assert!(matches!(w.next().await.unwrap(), Ok(Event::Deleted(_))));
        assert!(matches!(w.next().await.unwrap(), Err(SourceError::Gone(_))));
        match w.next().await.unwrap() {
            Ok(Event::Restarted(v)) => assert_eq!(names(&v), ["b"]),
            other => panic!("{other:?}"),
        }
        let calls = s.calls.lock().unwrap().clone();
        assert_eq!(calls, ["list", "watch 5", "watch 7", "watch 7", "list"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_lists_back_off_exponentially() {
        let s = Arc::new(Scripted::default());
        s.lists.lock().unwrap().extend([
            Err(SourceError::Transport("down".into())),
            Err(SourceError::Transport("down".into())),
            Err(SourceError::Transport("down".into())),
            Ok((vec![], "1".to_string())),
        ]);
        let mut w = Box::pin(watcher(s, Backoff::new(Duration::from_secs(1), Duration::from_secs(60))));
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(w.next().await.unwrap().is_err());
        }
        assert!(matches!(w.next().await.unwrap(), Ok(Event::Restarted(_))));
        // 1 + 2 + 4 seconds of backoff before the 4th list.
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }
}
