//! `sygnal health`: asks the configured listener's `GET /health` and exits 0 when it answers
//! 200, so container health checks need no curl. Plain HTTP/1.1 over a blocking socket, every
//! step bounded by the timeout.

use crate::config;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// How long each address gets to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Checks every configured address in turn; `Ok` as soon as one answers 200.
pub fn check(config_path: Option<PathBuf>) -> Result<(), String> {
    let path = config::config_path(config_path);
    let loaded =
        config::load(&path).map_err(|err| format!("config error in {}: {err}", path.display()))?;
    let http = &loaded.config.http;
    let mut failures = Vec::new();
    let addresses = crate::listeners::addresses(&http.bind_addresses, http.port)
        .map_err(|err| format!("http.bind_addresses: {err}"))?;
    for address in addresses {
        let target = SocketAddr::new(reachable(address.ip()), address.port());
        match probe(target) {
            Ok(()) => {
                println!("healthy: http://{target}/health answered 200");
                return Ok(());
            }
            Err(err) => failures.push(format!("{target}: {err}")),
        }
    }
    Err(format!("unhealthy: {}", failures.join("; ")))
}

/// The wildcard addresses are reached over loopback.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn probe(target: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {target}\r\nUser-Agent: sygnal-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The status line is all that matters; read at most a little.
    let mut head = [0u8; 256];
    let mut read = 0;
    while read < head.len() {
        let n = stream.read(&mut head[read..]).map_err(|e| e.to_string())?;
        if n == 0 || head[..read + n].contains(&b'\n') {
            read += n;
            break;
        }
        read += n;
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("answered {code}")),
        None => Err(format!("not an HTTP answer: {status_line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_over_loopback() {
        assert_eq!(
            reachable("0.0.0.0".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            reachable("::".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }
}
