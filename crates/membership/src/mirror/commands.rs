//! Administrator commands: what each one queues, or why it is refused.

use super::wait::WaitReason;
use super::{Handover, MirrorModule, Role, Step};
use crate::module::{Action, Command, CommandError, LogLevel, Origin, Script, ScriptAction, State};

impl MirrorModule {
    pub(super) fn apply_command(
        &mut self,
        command: Command,
        origin: &Origin,
    ) -> Result<(), CommandError> {
        let state = self.state();
        // Only stop may interrupt a transition: any other command would be
        // judged against a role that the queued steps are about to change.
        if !matches!(command, Command::Stop | Command::StopStart) && self.transient() {
            return Err(CommandError::Busy {
                state,
                script: self
                    .scripts
                    .script()
                    .map_or("nothing yet".into(), |s| s.name().to_string()),
            });
        }
        match command {
            Command::Start | Command::Second => {
                if self.role != Role::Stopped {
                    return Err(CommandError::AlreadyStarted(state));
                }
                let wait = if command == Command::Second {
                    WaitReason::AwaitPrimary
                } else {
                    WaitReason::PeerUnknown
                };
                self.persistent.running = true;
                self.persist();
                self.outbox.push(Action::ReleasePrimaryResources);
                self.why = Some(format!("{} command", command.as_str()));
                self.role = Role::Waiting(WaitReason::Starting);
                self.yields = command == Command::Second;
                self.run(Script::Prestart, false, State::Wait, ScriptAction::Start);
                self.steps.push_back(Step::Enter(
                    Role::Waiting(wait),
                    format!("{} command", command.as_str()),
                ));
            }
            Command::Prim => {
                if self.role == Role::Primary {
                    return Err(CommandError::AlreadyPrimary(state));
                }
                if let Some(p) = self.live_peer().filter(|p| p.state.is_primary()) {
                    return Err(CommandError::PeerIsPrimary {
                        peer: self.settings.peer.clone(),
                        state: p.state,
                    });
                }
                if !matches!(self.role, Role::Stopped | Role::Waiting(_)) {
                    return Err(CommandError::AlreadyStarted(state));
                }
                self.persistent.running = true;
                self.persist();
                if self.role == Role::Stopped {
                    self.outbox.push(Action::ReleasePrimaryResources);
                    self.role = Role::Waiting(WaitReason::Starting);
                    self.run(Script::Prestart, false, State::Wait, ScriptAction::Start);
                }
                if !self.uptodate {
                    self.log(
                        LogLevel::Error,
                        "prim forced on a node whose data may not be up to date: changes made on the other node since are lost here".into(),
                    );
                }
                self.steps
                    .push_back(Step::BecomePrimary("forced by the prim command".into()));
            }
            Command::Stop => {
                if self.role == Role::Stopped {
                    return Err(CommandError::AlreadyStopped);
                }
                // A stop under way goes on: queued again, its scripts would
                // run again (a hung one too, which `forcestop` just killed).
                let stopping = self
                    .steps
                    .iter()
                    .any(|s| matches!(s, Step::Enter(Role::Stopped, _)));
                if stopping {
                    self.log(
                        LogLevel::Info,
                        "stop: the module is already stopping".into(),
                    );
                    return Ok(());
                }
                self.persistent.running = false;
                self.persist();
                self.steps.clear();
                self.stop_application(Handover::Stop, ScriptAction::Stop, State::Stop);
                self.stop_both(State::Stop, ScriptAction::Stop);
                self.run(Script::Poststop, false, State::Stop, ScriptAction::Stop);
                self.steps
                    .push_back(Step::Enter(Role::Stopped, "stop command".into()));
            }
            Command::StopStart => {
                if self.role == Role::Stopped {
                    return Err(CommandError::AlreadyStopped);
                }
                self.why = Some("stopstart".into());
                self.stop_and_start_here(Handover::Stop, "stopstart: started again");
            }
            Command::Restart => match self.role {
                Role::Stopped => return Err(CommandError::AlreadyStopped),
                Role::Primary => {
                    self.stop_application(Handover::None, ScriptAction::StopStart, state);
                    self.steps.push_back(Step::AppRestarted);
                    self.run(Script::StartPrim, false, state, ScriptAction::StopStart);
                }
                _ => self.stop_and_start_here(Handover::None, "restart command"),
            },
            Command::Swap => {
                let peer = self.live_peer().map(|p| p.state);
                match (self.role, peer) {
                    (Role::Primary, Some(State::Second)) => self.swap_requested = true,
                    (Role::Secondary, Some(p)) if p.is_primary() => self.wants_swap = true,
                    _ => {
                        return Err(CommandError::CannotSwap {
                            local: state,
                            peer: peer.map_or("unreachable".into(), |p| p.to_string()),
                        })
                    }
                }
                self.log(LogLevel::Info, "swap requested by the administrator".into());
            }
        }
        self.log(
            LogLevel::Info,
            format!("action {} called by {origin}", command.as_str()),
        );
        Ok(())
    }

    /// Queues a stop of the module here (its application, if any, handing
    /// over with `handover`) followed by a fresh start, keeping it running.
    pub(super) fn stop_and_start_here(&mut self, handover: Handover, reason: &str) {
        self.steps.clear();
        self.stop_application(handover, ScriptAction::StopStart, State::Wait);
        self.stop_both(State::Wait, ScriptAction::StopStart);
        self.run(
            Script::Poststop,
            false,
            State::Wait,
            ScriptAction::StopStart,
        );
        self.run(
            Script::Prestart,
            false,
            State::Wait,
            ScriptAction::StopStart,
        );
        self.steps.push_back(Step::Enter(
            Role::Waiting(WaitReason::PeerUnknown),
            reason.into(),
        ));
    }
}
