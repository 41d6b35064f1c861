//! Times a paged management QUERY end to end with the Rust management
//! client (fe2o3-amqp): connect once, then page through every entity of
//! a type `--repeat` times; prints one JSON line per run. Used by
//! benches/mgmt/run.py (the Python Proton client decodes too slowly to
//! time the router with); its load mode is the harness's
//! `--load-client rust` (the default load is benches/mgmt/load.c, which
//! costs less than half its CPU per answer).
//!
//! `mgmt_query URL TYPE PAGE REPEAT`: page through TYPE REPEAT times.
//! `mgmt_query URL TYPE PAGE load RATE SECONDS [ATTR...]`: send RATE
//! QUERY requests/s (the first PAGE rows of TYPE, the attributes ATTR or
//! all) for SECONDS, on a schedule, one outstanding at a time; prints
//! sent/answered/latency as JSON.

use std::time::{Duration, Instant};

use tether_router::mgmt_client::{ClientOptions, MgmtClient};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 7 && args[4] == "load" {
        return load(&args);
    }
    if args.len() != 5 {
        eprintln!(
            "usage: mgmt_query URL TYPE PAGE REPEAT | URL TYPE PAGE load RATE SECONDS [ATTR...]"
        );
        std::process::exit(2);
    }
    let (url, ty) = (args[1].clone(), args[2].clone());
    let page: u32 = args[3].parse().expect("PAGE is a number");
    let repeat: u32 = args[4].parse().expect("REPEAT is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let opts = ClientOptions {
            url,
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let mut client = MgmtClient::connect(&opts)
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..repeat {
            let t0 = Instant::now();
            let (mut rows, mut pages, mut offset) = (0usize, 0u32, 0u32);
            loop {
                let r = client
                    .query(&ty, &[], offset, page)
                    .await
                    .map_err(|e| e.to_string())?;
                rows += r.rows.len();
                pages += 1;
                if r.rows.len() < page as usize {
                    break;
                }
                offset += page;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            println!("{{\"rows\": {rows}, \"pages\": {pages}, \"ms\": {ms:.2}}}");
        }
        client.close().await;
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("mgmt_query: {e}");
        std::process::exit(1);
    }
}

fn load(args: &[String]) {
    let (url, ty) = (args[1].clone(), args[2].clone());
    let page: u32 = args[3].parse().expect("PAGE is a number");
    let rate: f64 = args[5].parse().expect("RATE is a number");
    let seconds: f64 = args[6].parse().expect("SECONDS is a number");
    let attrs: Vec<String> = args[7..].to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let opts = ClientOptions {
            url,
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let mut client = MgmtClient::connect(&opts).await.map_err(|e| e.to_string())?;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let mut next = start;
        let (mut sent, mut errors) = (0u64, 0u64);
        let mut latencies: Vec<f64> = Vec::new();
        while next < end {
            tokio::time::sleep_until(next).await;
            next += interval;
            sent += 1;
            let t0 = Instant::now();
            match client.query(&ty, &attrs, 0, page).await {
                Ok(_) => latencies.push(t0.elapsed().as_secs_f64() * 1000.0),
                Err(e) => {
                    errors += 1;
                    eprintln!("mgmt_query: {e}");
                }
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let q = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        println!(
            "{{\"sent\": {sent}, \"answered\": {}, \"errors\": {errors}, \"rate\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}}}",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            q(0.5),
            q(0.99)
        );
        client.close().await;
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("mgmt_query: {e}");
        std::process::exit(1);
    }
}
