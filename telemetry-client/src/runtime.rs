//! Where background work runs: the caller's runtime, or one runtime on a thread of ours,
//! shared by every provider of the process, started by the first connection that needs it
//! and stopped when the last provider (and everything holding one) is gone.

use std::sync::{Arc, Mutex, Weak};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The runtime of a provider's background work: the driver's, or the process's shared one.
pub(crate) struct BackgroundRuntime {
    pub(crate) handle: Handle,
    /// Keeps the shared runtime running while this provider needs it.
    _owned: Option<Arc<OwnedRuntime>>,
}

impl BackgroundRuntime {
    /// The caller's runtime, or the one shared by every provider of the process (started
    /// now if none is running).
    pub(crate) fn new(handle: Option<Handle>) -> Self {
        let runtime = match handle {
            Some(handle) => Self {
                handle,
                _owned: None,
            },
            None => {
                let owned = shared();
                Self {
                    handle: owned.handle.clone(),
                    _owned: Some(owned),
                }
            }
        };
        // The statement clock's first paired reading, once per process (microseconds).
        crate::clock::start();
        runtime
    }
}

/// A runtime on a thread of ours, stopped when the last provider using it is gone.
struct OwnedRuntime {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for OwnedRuntime {
    /// Stops the runtime. Everything that needs it holds it (each provider, the host
    /// registry that every connection's lease and every close in progress holds), so this
    /// runs once the last of them, of every provider, is gone: a connection outliving its
    /// provider keeps reporting, and a close in progress finishes.
    fn drop(&mut self) {
        if let Some(stop) = self
            .stop
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
    }
}

/// The process's shared runtime: one worker thread whatever the number of providers (an
/// ADBC driver builds one per database), started by the first that needs it.
fn shared() -> Arc<OwnedRuntime> {
    static SHARED: Mutex<Weak<OwnedRuntime>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.upgrade() {
        return running;
    }
    let (handle, stop) = own_runtime();
    let owned = Arc::new(OwnedRuntime {
        handle,
        stop: Mutex::new(stop),
    });
    *slot = Arc::downgrade(&owned);
    owned
}

/// Starts the shared runtime: a multi-thread runtime with one worker (so that a
/// driver's auth provider may call `block_in_place`, which panics on a current-thread
/// runtime), alive until the returned sender fires (or is dropped).
fn own_runtime() -> (Handle, Option<oneshot::Sender<()>>) {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("databricks-telemetry".into())
        .spawn(move || {
            // Blocking threads run DNS look-ups and wait (bounded by the auth timeout) for auth
            // providers' answers: a few suffice, and an unresolvable host name must not pile
            // up hundreds of them.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("databricks-telemetry-worker")
                .enable_all()
                .max_blocking_threads(16)
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::debug!(error = %e, "telemetry runtime could not start");
                    return;
                }
            };
            let _ = handle_tx.send(rt.handle().clone());
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
            rt.shutdown_background();
        });
    match spawned.ok().and_then(|_| handle_rx.recv().ok()) {
        Some(handle) => (handle, Some(stop_tx)),
        None => {
            // No thread or no runtime: fall back to the caller's runtime if there is one, else
            // a runtime that is never driven (telemetry then does nothing, harmlessly).
            let handle = Handle::try_current().unwrap_or_else(|_| idle_runtime());
            (handle, None)
        }
    }
}

/// A handle to a runtime nobody drives: spawned tasks never run. Only reached if the OS
/// refuses a thread; telemetry is then inert rather than failing the driver.
fn idle_runtime() -> Handle {
    static IDLE: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    IDLE.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().ok())
        .as_ref()
        .map(|rt| rt.handle().clone())
        .unwrap_or_else(|| {
            // Both the thread and a bare runtime failed: the process is out of resources.
            // Handle::current panics outside a runtime, so this is the one place we cannot
            // continue; it is unreachable in practice (building a runtime without I/O or
            // timers only allocates).
            Handle::current()
        })
}
