"""The data: datasets as the pipeline reads them and checks them, the sources they are fetched
from, and the versions of data/raw that DVC keeps."""
