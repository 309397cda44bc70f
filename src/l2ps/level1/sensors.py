"""Sensors, their bands and the band "domains" (spec 01 §1.3, §1.4, §8).

Every band of every sensor has a domain name (BLUE, NIR, ...). Processing code addresses
bands by domain, never by Level-1 band number. NIR means Landsat NIR or Sentinel-2 B8A;
BROADNIR is Sentinel-2 B8.
"""
from __future__ import annotations

from dataclasses import dataclass

# Output band order of BOA/TOA (spec 01 §8): the domains that exist for a sensor, in this order.
OUTPUT_ORDER = ("BLUE", "GREEN", "RED", "REDEDGE1", "REDEDGE2", "REDEDGE3", "BROADNIR", "NIR",
                "SWIR1", "SWIR2")
INTERNAL_ONLY = ("ULTRABLUE", "VAPOR", "CIRRUS", "TEMP")


@dataclass(frozen=True)
class BandSpec:
    domain: str            # BLUE, GREEN, ..., TEMP
    l1_name: str           # Level-1 band id as in file names: "1", "6_VCID_1", "10", "B8A"
    resolution: float      # native resolution in metres (nominal)
    thermal: bool = False


@dataclass(frozen=True)
class SensorSpec:
    sensor: str                    # FORCE sensor id: LND04 ... SEN2C
    mission: str                   # "landsat" | "sentinel2"
    instrument: str                # TM, ETM+, OLI/TIRS, OLI-2/TIRS-2, MSI
    platform: str                  # landsat-5, sentinel-2a, ...
    bands: tuple[BandSpec, ...]    # internal order (spec 01 §1.3 / §1.4)
    saturation_dn: int             # 255 (8-bit) or 65535
    rsr_sensor: str                # sensor whose spectral responses are used (L9→L8, S2C→S2A)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(b.domain for b in self.bands)

    @property
    def output_domains(self) -> tuple[str, ...]:
        have = set(self.domains)
        return tuple(d for d in OUTPUT_ORDER if d in have)

    def band(self, domain: str) -> BandSpec:
        for b in self.bands:
            if b.domain == domain:
                return b
        raise KeyError(f"{self.sensor} has no band {domain}")

    @property
    def has_thermal(self) -> bool:
        return any(b.thermal for b in self.bands)

    @property
    def eight_bit(self) -> bool:
        return self.saturation_dn == 255


_TM = (BandSpec("BLUE", "1", 30), BandSpec("GREEN", "2", 30), BandSpec("RED", "3", 30),
       BandSpec("NIR", "4", 30), BandSpec("SWIR1", "5", 30), BandSpec("SWIR2", "7", 30),
       BandSpec("TEMP", "6", 120, thermal=True))
_ETM = _TM[:6] + (BandSpec("TEMP", "6_VCID_1", 60, thermal=True),)
_OLI = (BandSpec("ULTRABLUE", "1", 30), BandSpec("BLUE", "2", 30), BandSpec("GREEN", "3", 30),
        BandSpec("RED", "4", 30), BandSpec("NIR", "5", 30), BandSpec("CIRRUS", "9", 30),
        BandSpec("SWIR1", "6", 30), BandSpec("SWIR2", "7", 30),
        BandSpec("TEMP", "10", 100, thermal=True))
_MSI = (BandSpec("ULTRABLUE", "B01", 60), BandSpec("BLUE", "B02", 10),
        BandSpec("GREEN", "B03", 10), BandSpec("RED", "B04", 10),
        BandSpec("REDEDGE1", "B05", 20), BandSpec("REDEDGE2", "B06", 20),
        BandSpec("REDEDGE3", "B07", 20), BandSpec("BROADNIR", "B08", 10),
        BandSpec("NIR", "B8A", 20), BandSpec("VAPOR", "B09", 60), BandSpec("CIRRUS", "B10", 60),
        BandSpec("SWIR1", "B11", 20), BandSpec("SWIR2", "B12", 20))

SENSORS: dict[str, SensorSpec] = {
    "LND04": SensorSpec("LND04", "landsat", "TM", "landsat-4", _TM, 255, "LND04"),
    "LND05": SensorSpec("LND05", "landsat", "TM", "landsat-5", _TM, 255, "LND05"),
    "LND07": SensorSpec("LND07", "landsat", "ETM+", "landsat-7", _ETM, 255, "LND07"),
    "LND08": SensorSpec("LND08", "landsat", "OLI/TIRS", "landsat-8", _OLI, 65535, "LND08"),
    "LND09": SensorSpec("LND09", "landsat", "OLI-2/TIRS-2", "landsat-9", _OLI, 65535, "LND08"),
    "SEN2A": SensorSpec("SEN2A", "sentinel2", "MSI", "sentinel-2a", _MSI, 65535, "SEN2A"),
    "SEN2B": SensorSpec("SEN2B", "sentinel2", "MSI", "sentinel-2b", _MSI, 65535, "SEN2B"),
    "SEN2C": SensorSpec("SEN2C", "sentinel2", "MSI", "sentinel-2c", _MSI, 65535, "SEN2A"),
    "SEN2D": SensorSpec("SEN2D", "sentinel2", "MSI", "sentinel-2d", _MSI, 65535, "SEN2A"),
}


def sensor_spec(sensor: str) -> SensorSpec:
    try:
        return SENSORS[sensor]
    except KeyError:
        raise KeyError(f"unknown sensor {sensor!r}; known: {', '.join(SENSORS)}") from None
