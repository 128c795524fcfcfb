"""Raw downloads to manifests, the embedded demo data, and report labeling."""
