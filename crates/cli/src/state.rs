//! `holdfast state`: the modules of this node, coloured like the product
//! (PRIM/SECOND green, ALONE orange, STOP/WAIT red).

use holdfast_daemon::registry::ModuleSummary;
use holdfast_membership::State;
use owo_colors::{OwoColorize, Stream};

fn coloured(state: State) -> String {
    let text = format!("{:<6}", state.as_str());
    match state {
        State::Prim | State::Second | State::Up => text
            .if_supports_color(Stream::Stdout, |t| t.green())
            .to_string(),
        // Orange where the terminal has 256 colours would be nicer; yellow is
        // what every terminal shows.
        State::Alone => text
            .if_supports_color(Stream::Stdout, |t| t.yellow())
            .to_string(),
        State::Stop | State::Wait => text
            .if_supports_color(Stream::Stdout, |t| t.red())
            .to_string(),
    }
}

pub fn print(list: &[ModuleSummary]) {
    if list.is_empty() {
        println!("no module installed on this node");
        return;
    }
    println!(
        "{:<12} {:<10} {:<6} {:<18} REASON",
        "MODULE", "NODE", "STATE", "PEER"
    );
    for m in list {
        let v = &m.view;
        let peer = match v.peer_state {
            Some(state) => format!("{} {}", v.peer, state),
            None => format!("{} ?", v.peer),
        };
        let transient = match &v.running_script {
            Some(script) => format!(" [running {script}]"),
            None if v.transient => " [transient]".to_string(),
            None => String::new(),
        };
        let networks: Vec<&str> = v
            .networks_up
            .iter()
            .map(|up| if *up { "up" } else { "down" })
            .collect();
        println!(
            "{:<12} {:<10} {} {:<18} {}{} (heartbeat networks: {})",
            m.module,
            m.node,
            coloured(v.state),
            peer,
            v.reason,
            transient,
            networks.join(", ")
        );
    }
}
