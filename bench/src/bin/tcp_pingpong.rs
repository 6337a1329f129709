//! A loopback TCP ping-pong: the floor under any request/answer protocol on this machine.
//!
//! One thread echoes, the main thread sends a message of `--bytes` bytes (default 100), waits
//! for the whole echo, and records the round trip in an hdrhistogram, for `--secs` seconds
//! (default 5) after a short untimed warm-up. Both ends set `TCP_NODELAY`; plain blocking
//! `std::net` sockets, one message in flight. Prints one JSON object on stdout:
//! `{"message_bytes", "secs", "round_trips", "round_trips_per_sec", "latency_us": {p50, p99,
//! p999, max, mean}}`.
//!
//!   tcp_pingpong [--secs S] [--bytes N]

use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Untimed round trips before the measurement (connection setup, page faults, cache warm-up).
const WARMUP_ROUND_TRIPS: u64 = 1000;

/// Largest round trip the histogram records, in nanoseconds (longer ones are clamped).
const LATENCY_NS_MAX: u64 = 10_000_000_000;

#[derive(Serialize)]
struct LatencyUs {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct Report {
    message_bytes: usize,
    secs: f64,
    round_trips: u64,
    round_trips_per_sec: f64,
    latency_us: LatencyUs,
}

/// A loopback TCP ping-pong: the floor under any request/answer protocol on this machine.
#[derive(clap::Parser)]
#[command(name = "tcp_pingpong")]
struct Options {
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    secs: f64,
    /// Bytes per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    bytes: u32,
}

fn positive_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        Ok(_) => Err("must be a positive number of seconds".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Echoes every `bytes`-byte message back until the peer closes.
fn echo(mut stream: TcpStream, bytes: usize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; bytes];
    loop {
        match stream.read_exact(&mut buffer) {
            Ok(()) => stream.write_all(&buffer)?,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

fn run(options: &Options) -> Result<Report, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let address = listener.local_addr()?;
    let bytes = options.bytes as usize;
    let echoer = std::thread::Builder::new()
        .name("tcp-pingpong-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (stream, _) = listener.accept()?;
            echo(stream, bytes)
        })?;

    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let message: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut answer = vec![0u8; bytes];
    let mut round_trip = |stream: &mut TcpStream| -> std::io::Result<()> {
        stream.write_all(&message)?;
        stream.read_exact(&mut answer)
    };
    for _ in 0..WARMUP_ROUND_TRIPS {
        round_trip(&mut stream)?;
    }

    let mut histogram = Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3)?;
    let duration = Duration::from_secs_f64(options.secs);
    let started = Instant::now();
    let mut round_trips = 0u64;
    loop {
        let sent = Instant::now();
        round_trip(&mut stream)?;
        let now = Instant::now();
        let ns = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(ns.clamp(1, LATENCY_NS_MAX));
        round_trips += 1;
        if now - started >= duration {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(stream);
    echoer
        .join()
        .map_err(|_| "the echo thread panicked")?
        .map_err(|error| format!("echo thread: {error}"))?;

    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(Report {
        message_bytes: bytes,
        secs: elapsed,
        round_trips,
        round_trips_per_sec: round_trips as f64 / elapsed,
        latency_us: LatencyUs {
            p50: us(histogram.value_at_quantile(0.50)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
        },
    })
}

fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    match run(&options) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tcp_pingpong: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("tcp_pingpong: {error}");
            ExitCode::FAILURE
        }
    }
}
