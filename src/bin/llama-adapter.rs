//! The native command-line tool. Today: `info` and `bench kernels`; the model
//! commands (convert, generate, eval, bench model) build on the same engine.

use clap::{Parser, Subcommand};

use llama_adapter_web::bench::{bench_matmul, host_copy_bandwidth};
use llama_adapter_web::format::quant::QuantFormat;
use llama_adapter_web::gpu::{GpuContext, GpuOptions};
use llama_adapter_web::kernels::matmul::MatmulShape;

#[derive(Parser)]
#[command(name = "llama-adapter", version, about = "LLaMA-Adapter V2 on your GPU (native tool of llama-adapter-web)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe the GPU adapter the engine picks.
    Info,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Matmul GEMV at the 7B shapes in every format (GB/s of weights) and GEMM (FLOP/s).
    Kernels {
        /// Dispatches per timed pass.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Formats to run (comma separated: f32,f16,q8,q4).
        #[arg(long, default_value = "f32,f16,q8,q4", value_delimiter = ',')]
        formats: Vec<String>,
        /// x rows for the GEMM (prefill-like) runs.
        #[arg(long, default_value_t = 128)]
        gemm_rows: usize,
        /// Skip the GEMM runs.
        #[arg(long)]
        no_gemm: bool,
        /// Kernel shape: auto (what the engine uses on this adapter), gemv, gemm or rowwise.
        #[arg(long, default_value = "auto")]
        shape: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = GpuContext::new_blocking(GpuOptions::from_env())?;
    match cli.command {
        Command::Info => println!("adapter: {}", ctx.info),
        Command::Bench { what: BenchWhat::Kernels { reps, formats, gemm_rows, no_gemm, shape } } => {
            let shape = match shape.as_str() {
                "auto" => MatmulShape::Auto,
                "gemv" => MatmulShape::Gemv,
                "gemm" => MatmulShape::Gemm,
                "rowwise" => MatmulShape::Rowwise,
                other => return Err(format!("unknown shape {other:?} (expected auto, gemv, gemm or rowwise)").into()),
            };
            let formats: Vec<QuantFormat> = formats
                .iter()
                .map(|f| QuantFormat::parse(f).ok_or_else(|| format!("unknown format {f:?} (expected f32, f16, q8 or q4)")))
                .collect::<Result<_, _>>()?;
            println!("adapter: {}", ctx.info);
            let roofline = if ctx.info.device_type == "Cpu" {
                let bw = host_copy_bandwidth();
                println!("host memory bandwidth (copy, all cores): {bw:.2} GB/s = the roofline of this CPU-backed adapter");
                Some(bw)
            } else {
                None
            };
            println!("\nGEMV, one token (decode), y = x·Wᵀ; GB/s counts weight bytes read once per call");
            println!("{:<6} {:<8} {:>12} {:>7} {:>13} {:>12} {:>9} {:>9}  clock", "format", "kernel", "n x k", "blocks", "weight bytes", "time/call", "GB/s", "roofline");
            for &format in &formats {
                for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008)] {
                    let f = bench_matmul(&ctx, format, 1, n, k, shape, reps)?;
                    println!(
                        "{:<6} {:<8} {:>12} {:>7} {:>13} {:>9.3} ms {:>9.2} {:>9}  {}",
                        format.name(),
                        f.shape,
                        format!("{n}x{k}"),
                        f.blocks,
                        f.weight_bytes,
                        f.seconds * 1e3,
                        f.gbps(),
                        roofline.map_or("-".to_string(), |bw| format!("{:.1}%", 100.0 * f.gbps() / bw)),
                        f.clock.name()
                    );
                }
            }
            if !no_gemm {
                println!("\nGEMM, {gemm_rows} rows (prefill), 4096x4096");
                println!("{:<6} {:<8} {:>14} {:>12} {:>10}  clock", "format", "kernel", "m x n x k", "time/call", "GFLOP/s");
                for &format in &formats {
                    let f = bench_matmul(&ctx, format, gemm_rows, 4096, 4096, shape, reps.div_ceil(4))?;
                    println!(
                        "{:<6} {:<8} {:>14} {:>9.3} ms {:>10.2}  {}",
                        format.name(),
                        f.shape,
                        format!("{gemm_rows}x4096x4096"),
                        f.seconds * 1e3,
                        f.gflops(),
                        f.clock.name()
                    );
                }
            }
        }
    }
    Ok(())
}
