//! The shutdown watch: one sender, turned `true` once; every accept loop, connection and
//! the admin listener wait on a receiver.

use tokio::sync::watch;

/// The sending side: `stop` tells every receiver.
pub(crate) struct Stop(watch::Sender<bool>);

impl Stop {
    pub(crate) fn new() -> Self {
        Stop(watch::channel(false).0)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    pub(crate) fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// Completes once `rx` holds `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
