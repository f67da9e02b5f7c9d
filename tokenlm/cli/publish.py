"""`tokenlm publish`: the command line of tokenlm.pipeline.publish (options in, library call out)."""

from __future__ import annotations

import click

from tokenlm.pipeline.publish import publish


@click.command("publish")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The folder to write (new, empty, or "
              "one publish wrote before).")
@click.option("-K", "--codebook-size", type=int, help="The codebook to publish. [the run's current K]")
@click.option("--hub-id", help="Also upload to the Hugging Face Hub as this repo id (needs huggingface_hub and a "
                               "login; untested here). [no upload]")
def command(run, out, codebook_size, hub_id):
    """Write RUN's tokenizer, LM and vocoder as one shareable folder with a model card.

    \b
      tokenlm publish runs/demo --out models/tokenlm-demo
      python -c "from tokenlm.pipeline.pretrained import PretrainedModel; PretrainedModel.from_pretrained('models/tokenlm-demo')"
    """
    target = publish(run, out, codebook_size, hub_id)
    click.echo(f"pretrained folder: {target}")
