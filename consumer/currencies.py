"""ISO 4217 codes of the currencies in circulation, for checking `CUSTOBAR_DEFAULT_CURRENCY`.

A static list on purpose: settings are checked offline, at start. It is ISO 4217 List One as of
2026 without the codes no shop sells in: fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI,
UYW), precious metals and bond units (XAG, XAU, XPD, XPT, XBA-XBD, XDR, XSU, XUA) and the
testing and "no currency" codes (XTS, XXX). Withdrawn codes are out too: HRK (euro, 2023), CUC
(2021), SLL (became SLE), ZWL (became ZWG, 2024), ANG (became XCG, 2025), BGN (euro, 2026).
When ISO adds a currency, add it here.
"""

from __future__ import annotations

_CODES = """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
    BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD
    RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP
    TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW
    ZWG
"""
ACTIVE_CURRENCIES = frozenset(_CODES.split())
