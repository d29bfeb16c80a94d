//! `holdfast-lab sample-app`: the demo's and the tests' application, run on
//! a lab host by the sample scripts' start_prim.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Appends a line per second to `dir/app.log` and answers connections on
/// `port` with `node`; on `echo_port`, the name then an echo of each line.
pub fn run(dir: &Path, node: &str, port: u16, echo_port: Option<u16>) -> Result<()> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("sample application: port {port}"))?;
    if let Some(echo_port) = echo_port {
        let echo = std::net::TcpListener::bind(("0.0.0.0", echo_port))
            .with_context(|| format!("sample application: port {echo_port}"))?;
        let name = node.to_string();
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut writer = stream.try_clone()?;
                    writeln!(writer, "{name}")?;
                    for line in std::io::BufReader::new(stream).lines() {
                        writeln!(writer, "{}", line?)?;
                    }
                    Ok(())
                });
            }
        });
    }
    let log_path = dir.join("app.log");
    let name = node.to_string();
    std::thread::spawn(move || loop {
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                log,
                "{:02}:{:02}:{:02} served by {name}",
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    for stream in listener.incoming() {
        match stream {
            // A client that went away is its own business.
            Ok(mut stream) => {
                let _ = writeln!(stream, "{node}");
            }
            // Out of descriptors or the like: do not spin on it.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Ok(())
}
