//! Seed: loads the reference data (regions, then ports) from the ratestask CSV files, so a new
//! database can take prices. Idempotent: rows are upserted by their key.

use anyhow::Context;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Region {
    slug: String,
    name: String,
    parent_slug: Option<String>,
}

#[derive(Deserialize)]
struct Port {
    code: String,
    name: String,
    parent_slug: String,
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .with_context(|| format!("{} is not a valid reference file", path.display()))
}

/// Upserts `regions.csv` and `ports.csv` from `dir`. Returns (regions, ports) counts.
pub async fn seed(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> anyhow::Result<(usize, usize)> {
    let regions: Vec<Region> = read(&dir.join("regions.csv"))?;
    let ports: Vec<Port> = read(&dir.join("ports.csv"))?;
    let tx = client.transaction().await?;
    // One statement per table: foreign keys between regions are checked at its end.
    let slugs: Vec<&str> = regions.iter().map(|r| r.slug.as_str()).collect();
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    let parents: Vec<Option<&str>> = regions
        .iter()
        .map(|r| r.parent_slug.as_deref().filter(|p| !p.is_empty()))
        .collect();
    tx.execute(
        "INSERT INTO regions (slug, name, parent_slug)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
         ON CONFLICT (slug) DO UPDATE SET name = excluded.name, parent_slug = excluded.parent_slug",
        &[&slugs, &names, &parents],
    )
    .await
    .context("loading regions")?;
    let codes: Vec<&str> = ports.iter().map(|p| p.code.as_str()).collect();
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    let parents: Vec<&str> = ports.iter().map(|p| p.parent_slug.as_str()).collect();
    tx.execute(
        "INSERT INTO ports (code, name, parent_slug)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
         ON CONFLICT (code) DO UPDATE SET name = excluded.name, parent_slug = excluded.parent_slug",
        &[&codes, &names, &parents],
    )
    .await
    .context("loading ports")?;
    tx.commit().await?;
    Ok((regions.len(), ports.len()))
}
