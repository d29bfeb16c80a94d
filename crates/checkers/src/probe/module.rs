//! Module checker: another module's state, read through [`ModuleStates`],
//! which the daemon implements over its module registry.

use std::sync::Arc;

use super::Probe;
use crate::verdict::Verdict;
use holdfast_config::checker::ModuleChecker;

/// What the module checker needs to know of another module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleStatus {
    /// State name as users see it: `STOP`, `WAIT`, `ALONE`, `PRIM`,
    /// `SECOND`, `UP`.
    pub state: String,
    /// A number that changes whenever the module (re)starts its
    /// application (a restart, a stopstart, a failover): how a restart is
    /// noticed even when no probe fell between its stop and its start.
    pub generation: u64,
}

/// Source of module states (the daemon's registry).
pub trait ModuleStates: Send + Sync {
    /// The module's current status, `None` when no such module runs here.
    fn status(&self, module: &str) -> Option<ModuleStatus>;
}

/// Sans-IO judgement of successive statuses of the watched module.
#[derive(Debug, Clone)]
pub struct ModuleJudge {
    module: String,
    expected: Vec<String>,
    /// Generation of the last status judged Up.
    last_up: Option<u64>,
}

impl ModuleJudge {
    pub fn new(checker: &ModuleChecker) -> Self {
        Self {
            module: checker.module.clone(),
            expected: checker.expected.clone(),
            last_up: None,
        }
    }

    /// Judges one observation. A module seen in an expected state but with
    /// another generation than at the previous Up was restarted meanwhile:
    /// Down once (so that the action restarts what depends on it), then Up.
    pub fn judge(&mut self, status: Option<ModuleStatus>) -> Verdict {
        let Some(status) = status else {
            self.last_up = None;
            return Verdict::Down(format!("module {}: not found on this node", self.module));
        };
        if !self
            .expected
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&status.state))
        {
            self.last_up = None;
            return Verdict::Down(format!(
                "module {}: {}, expected {}",
                self.module,
                status.state,
                self.expected.join(" or ")
            ));
        }
        let previous = self.last_up.replace(status.generation);
        match previous {
            Some(generation) if generation != status.generation => Verdict::Down(format!(
                "module {}: restarted (generation {generation} -> {})",
                self.module, status.generation
            )),
            _ => Verdict::Up,
        }
    }
}

/// Probe of a module checker.
pub struct ModuleProbe {
    judge: ModuleJudge,
    states: Arc<dyn ModuleStates>,
}

impl std::fmt::Debug for ModuleProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleProbe")
            .field("judge", &self.judge)
            .finish_non_exhaustive()
    }
}

impl ModuleProbe {
    pub fn new(checker: &ModuleChecker, states: Arc<dyn ModuleStates>) -> Self {
        Self {
            judge: ModuleJudge::new(checker),
            states,
        }
    }
}

impl Probe for ModuleProbe {
    async fn probe(&mut self) -> Verdict {
        let status = self.states.status(&self.judge.module);
        self.judge.judge(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, generation: u64) -> Option<ModuleStatus> {
        Some(ModuleStatus {
            state: state.into(),
            generation,
        })
    }

    #[test]
    fn expected_states_and_restarts() {
        let mut judge = ModuleJudge::new(&ModuleChecker {
            module: "mysql".into(),
            expected: vec!["PRIM".into(), "ALONE".into()],
        });
        assert_eq!(
            judge.judge(None),
            Verdict::Down("module mysql: not found on this node".into())
        );
        assert_eq!(
            judge.judge(status("WAIT", 1)),
            Verdict::Down("module mysql: WAIT, expected PRIM or ALONE".into())
        );
        assert_eq!(judge.judge(status("ALONE", 1)), Verdict::Up);
        assert_eq!(judge.judge(status("PRIM", 1)), Verdict::Up);
        assert_eq!(
            judge.judge(status("PRIM", 2)),
            Verdict::Down("module mysql: restarted (generation 1 -> 2)".into())
        );
        assert_eq!(judge.judge(status("PRIM", 2)), Verdict::Up);
        // A stop seen in between is Down already; the start after it is Up.
        assert!(!judge.judge(status("STOP", 2)).is_up());
        assert_eq!(judge.judge(status("prim", 3)), Verdict::Up);
    }
}
