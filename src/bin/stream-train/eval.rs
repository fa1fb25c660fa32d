//! Using a saved run: `eval` (accuracy, loss, confusion matrix on a split) and `predict`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use cifar_stream::augment;
use cifar_stream::store::{Reader, Split};
use cifar_stream::train::Tta;
use cifar_stream::train::{read_image, SavedRun};

use crate::args::DeviceFlag;
use crate::finish::Finish;

/// Which saved run, which of its weights, on which device, with which TTA.
#[derive(Args)]
pub struct SavedRunArgs {
    /// Run folder holding checkpoint.safetensors (and config.toml).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    raw: bool,
    /// Test-time augmentation: none or flip [default: the run's].
    #[arg(long, value_enum)]
    tta: Option<Tta>,
    #[command(flatten)]
    device: DeviceFlag,
}

impl SavedRunArgs {
    /// Loads the run, saying what was loaded.
    fn open(&self) -> Result<SavedRun> {
        let run = SavedRun::load(&self.checkpoint, self.raw, &self.device.select()?)?;
        if run.precision_fallback {
            eprintln!("note: this run trained in bf16; the CPU evaluates it in f32");
        }
        eprintln!("{}", run.describe());
        Ok(run)
    }
}

/// `eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    run: SavedRunArgs,
    /// Store folder [default: the run's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    train_split: bool,
}

/// `predict`.
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    run: SavedRunArgs,
    /// Images to classify (PNG, JPEG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Resize images of another size to the run's (bilinear with antialiasing, as
    /// torchvision's `Resize` on a PIL image; the aspect ratio is not kept). Without it such an
    /// image is refused.
    #[arg(long)]
    resize: bool,
}

/// `eval`: the confusion matrix, loss and accuracy of a saved run on a split.
pub fn eval(args: EvalArgs) -> Result<Finish> {
    let run = args.run.open()?;
    let data = args.data.unwrap_or_else(|| run.state.config.data.clone());
    let split = if args.train_split {
        Split::Train
    } else {
        Split::Test
    };
    let path = split.path_in(&data);
    // The store's errors name the file.
    let reader = Reader::open(&path)?;
    let pool = Arc::new(augment::thread_pool(0)?);
    let e = run.evaluate(Arc::new(reader), pool, run.tta(args.run.tta))?;
    print!("{}", e.confusion_table(&run.state.classes));
    println!("loss: {:.4}", e.loss);
    println!("{} accuracy: {:.2}%", split.name(), e.accuracy * 100.0);
    Ok(Finish::Done)
}

/// `predict`: the most likely class of each image, with its probability.
pub fn predict(args: PredictArgs) -> Result<Finish> {
    let run = args.run.open()?;
    let mut pixels = Vec::new();
    for path in &args.images {
        pixels.extend(read_image(path, run.state.shape, args.resize)?);
    }
    let predictions = run.predict(&pixels, run.tta(args.run.tta))?;
    for (path, p) in args.images.iter().zip(predictions) {
        println!(
            "{}: {} ({:.1}%)",
            path.display(),
            p.name,
            p.probability * 100.0
        );
    }
    Ok(Finish::Done)
}
