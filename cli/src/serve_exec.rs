//! The API's `exec` runs on the controller's containerd runtime: the
//! adapter between `steward_apiserver::Executor` and
//! `steward_controller::containerd::exec`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use steward_apiserver::{ExecError, ExecIo, ExecProcess, ExecRequest, Executor, Started};
use steward_controller::containerd::exec::{self as ctr_exec, ContainerdExec, ExecOptions};

/// Exec sessions open at once; more get 429.
pub const MAX_EXEC_SESSIONS: usize = 64;

pub struct ContainerdExecutor(pub ContainerdExec);

struct Process(ctr_exec::ExecProcess);

fn error(e: ctr_exec::ExecError) -> ExecError {
    match e {
        ctr_exec::ExecError::NotRunning(m) => ExecError::NotRunning(m),
        ctr_exec::ExecError::Busy(m) => ExecError::Busy(m),
        ctr_exec::ExecError::Failed(m) => ExecError::Failed(m),
    }
}

impl Executor for ContainerdExecutor {
    fn running<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<String, ExecError>> {
        Box::pin(async move { self.0.running(uid).await.map_err(error) })
    }

    fn start<'a>(&'a self, id: &'a str, req: &'a ExecRequest) -> BoxFuture<'a, Result<Started, ExecError>> {
        Box::pin(async move {
            let o = ExecOptions {
                command: req.command.clone(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            };
            let (p, s) = self.0.start(id, &o).await.map_err(error)?;
            let io = ExecIo {
                stdin: s.stdin.map(|w| Box::pin(w) as _),
                stdout: s.stdout.map(|r| Box::pin(r) as _),
                stderr: s.stderr.map(|r| Box::pin(r) as _),
            };
            Ok((Arc::new(Process(p)) as Arc<dyn ExecProcess>, io))
        })
    }
}

impl ExecProcess for Process {
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move { self.0.resize(width.into(), height.into()).await.map_err(error) })
    }

    fn close_stdin(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move { self.0.close_stdin().await.map_err(error) })
    }

    fn wait(&self) -> BoxFuture<'_, Result<u32, ExecError>> {
        Box::pin(async move { self.0.wait().await.map_err(error) })
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move { self.0.kill().await.map_err(error) })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.cleanup())
    }
}
