//! The states of this node's modules, for the module checkers of the others
//! (SafeKit's `<module>` checker): each module task publishes its state, and
//! a generation that grows whenever it starts its application.

use std::collections::BTreeMap;

use holdfast_checkers::{ModuleStates, ModuleStatus};
use holdfast_membership::State;
use parking_lot::RwLock;

#[derive(Debug, Default)]
pub struct ModuleBoard {
    modules: RwLock<BTreeMap<String, ModuleStatus>>,
}

impl ModuleBoard {
    fn update(&self, module: &str, change: impl FnOnce(&mut ModuleStatus)) {
        let mut modules = self.modules.write();
        let status = modules
            .entry(module.to_string())
            .or_insert_with(|| ModuleStatus {
                state: State::Stop.to_string(),
                generation: 0,
            });
        change(status);
    }

    /// `module` is now in `state`.
    pub fn publish(&self, module: &str, state: State) {
        self.update(module, |s| s.state = state.to_string());
    }

    /// `module` starts its application (start_prim, or a farm's start_both).
    pub fn started(&self, module: &str) {
        self.update(module, |s| s.generation += 1);
    }

    /// `module`'s task ended (removed, or the daemon stops).
    pub fn remove(&self, module: &str) {
        self.modules.write().remove(module);
    }
}

impl ModuleStates for ModuleBoard {
    fn status(&self, module: &str) -> Option<ModuleStatus> {
        self.modules.read().get(module).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_generations_are_published_and_removed() {
        let board = ModuleBoard::default();
        assert_eq!(board.status("db"), None);
        board.publish("db", State::Wait);
        board.started("db");
        board.publish("db", State::Prim);
        assert_eq!(
            board.status("db"),
            Some(ModuleStatus {
                state: "PRIM".into(),
                generation: 1
            })
        );
        board.started("db");
        assert_eq!(board.status("db").unwrap().generation, 2);
        board.remove("db");
        assert_eq!(board.status("db"), None);
    }
}
