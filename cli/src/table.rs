//! The table `get` prints: NAME READY STATUS RESTARTS AGE (+ IMAGE CONTAINER-ID
//! PID IP with `-o wide`, NAMESPACE first with `-A`), aligned like kubectl's
//! tabwriter: each column as wide as its widest cell plus three spaces.

use chrono::{DateTime, Utc};
use steward_schema::table::COLUMNS;
pub use steward_schema::table::{human_age, status_text};
use steward_schema::Container;

const PADDING: usize = 3;

/// Which columns to print.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns {
    pub namespace: bool,
    pub wide: bool,
}

impl Columns {
    pub fn header(&self) -> Vec<String> {
        let mut h = Vec::new();
        if self.namespace {
            h.push("NAMESPACE".to_string());
        }
        h.extend(COLUMNS.iter().filter(|c| self.wide || c.priority == 0).map(|c| c.name.to_uppercase()));
        h
    }

    pub fn row(&self, c: &Container, now: DateTime<Utc>) -> Vec<String> {
        let mut r = Vec::new();
        if self.namespace {
            r.push(c.metadata.namespace.clone());
        }
        let cells = steward_schema::table::cells(c, now);
        r.extend(COLUMNS.iter().zip(cells).filter(|(col, _)| self.wide || col.priority == 0).map(|(_, cell)| cell.text()));
        r
    }
}

/// Aligns rows into columns. Widths only grow, so rows printed one at a
/// time during `get -w` stay aligned with the header printed before them.
#[derive(Debug, Default)]
pub struct TableWriter {
    widths: Vec<usize>,
}

impl TableWriter {
    /// Formats rows (header included, if wanted), each ending in a newline.
    pub fn render(&mut self, rows: &[Vec<String>]) -> String {
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match self.widths.get_mut(i) {
                    Some(cur) => *cur = (*cur).max(w),
                    None => self.widths.push(w),
                }
            }
        }
        let mut out = String::new();
        for row in rows {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = self.widths[i] + PADDING - cell.chars().count();
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use steward_schema::{Condition, ContainerState, ContainerStatus, Phase, StateRunning, StateWaiting, Time};

    fn container(name: &str) -> Container {
        let mut c = Container::default();
        c.metadata.name = name.into();
        c.metadata.namespace = "default".into();
        c.spec.image = "busybox:1.36".into();
        c
    }

    #[test]
    fn ages() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (303, "5m3s"),
            (47 * 60 + 5, "47m"),
            (3 * 3600 + 12 * 60, "3h12m"),
            (5 * 3600, "5h"),
            (30 * 3600, "30h"),
            (2 * 86_400 + 4 * 3600, "2d4h"),
            (300 * 86_400, "300d"),
            (2 * 365 * 86_400 + 10 * 86_400, "2y10d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_age(TimeDelta::seconds(secs)), want, "{secs}s");
        }
        assert_eq!(human_age(TimeDelta::seconds(-60)), "<invalid>");
    }

    #[test]
    fn status_column() {
        let mut c = container("a");
        assert_eq!(status_text(&c), "Pending");
        c.status = Some(ContainerStatus { phase: Some(Phase::Running), ..Default::default() });
        assert_eq!(status_text(&c), "Running");
        c.status = Some(ContainerStatus {
            phase: Some(Phase::Pending),
            state: Some(ContainerState {
                waiting: Some(StateWaiting { reason: "CrashLoopBackOff".into(), message: String::new() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(status_text(&c), "CrashLoopBackOff");
        // Paused: running, Ready False with reason Paused.
        c.status = Some(ContainerStatus {
            phase: Some(Phase::Running),
            state: Some(ContainerState { running: Some(StateRunning { started_at: None }), ..Default::default() }),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "Paused".into(),
                message: String::new(),
                last_transition_time: None,
            }],
            ..Default::default()
        });
        assert_eq!(status_text(&c), "Paused");
        c.metadata.deletion_timestamp = Some(Time::now());
        assert_eq!(status_text(&c), "Terminating");
    }

    #[test]
    fn table_layout() {
        let now = Utc::now();
        let mut a = container("web");
        a.metadata.creation_timestamp = Some(Time(now - TimeDelta::seconds(90)));
        a.status = Some(ContainerStatus {
            phase: Some(Phase::Running),
            restart_count: 2,
            container_id: Some("containerd://x".into()),
            pid: Some(42),
            ip: Some("10.88.0.2".into()),
            conditions: vec![steward_schema::Condition { type_: "Ready".into(), status: "True".into(), ..Default::default() }],
            ..Default::default()
        });
        let mut b = container("database");
        b.metadata.namespace = "prod".into();
        b.metadata.creation_timestamp = Some(Time(now - TimeDelta::seconds(5)));

        let cols = Columns::default();
        let mut t = TableWriter::default();
        let out = t.render(&[cols.header(), cols.row(&a, now), cols.row(&b, now)]);
        assert_eq!(
            out,
            "NAME       READY   STATUS    RESTARTS   AGE\n\
             web        1/1     Running   2          90s\n\
             database   0/1     Pending   0          5s\n"
        );
        // A later row keeps the widths established by the header.
        let mut c = container("x");
        c.metadata.creation_timestamp = None;
        assert_eq!(t.render(&[cols.row(&c, now)]), "x          0/1     Pending   0          <unknown>\n");

        let cols = Columns { namespace: true, wide: true };
        let out = TableWriter::default().render(&[cols.header(), cols.row(&a, now), cols.row(&b, now)]);
        assert_eq!(
            out,
            "NAMESPACE   NAME       READY   STATUS    RESTARTS   AGE   IMAGE          CONTAINER-ID     PID      IP\n\
             default     web        1/1     Running   2          90s   busybox:1.36   containerd://x   42       10.88.0.2\n\
             prod        database   0/1     Pending   0          5s    busybox:1.36   <none>           <none>   <none>\n"
        );
    }
}
