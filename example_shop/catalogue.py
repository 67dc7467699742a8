"""The demo catalogue: (category, sku, name, price, cost, lasts-days, description)."""

from __future__ import annotations

CATEGORIES = {"tea": "Tea", "coffee": "Coffee", "brewing": "Brewing gear", "gifts": "Gifts"}

PRODUCTS = [
    ("tea", "TEA-SENCHA", "Sencha green tea, 100 g", 990, 410, 30, "A grassy, bright Japanese green tea."),
    ("tea", "TEA-EARLGREY", "Earl Grey, 100 g", 790, 300, 30, "Black tea with bergamot from Calabria."),
    ("tea", "TEA-ROOIBOS", "Rooibos vanilla, 100 g", 690, 250, 30, "Caffeine-free, sweet and round."),
    ("tea", "TEA-CHAI", "Masala chai blend, 150 g", 1090, 420, 35, "Assam with cardamom, ginger and cinnamon."),
    ("tea", "TEA-MATCHA", "Ceremonial matcha, 30 g", 2490, 1150, 40, "Stone-ground Uji matcha."),
    ("coffee", "COF-ESPRESSO", "Espresso blend, 500 g", 1690, 780, 21, "Chocolate and hazelnut notes."),
    ("coffee", "COF-ETHIOPIA", "Ethiopia Yirgacheffe, 250 g", 1290, 600, 14, "Floral and citrus, light roast."),
    ("coffee", "COF-COLOMBIA", "Colombia Huila, 250 g", 1190, 540, 14, "Caramel and red apple, medium roast."),
    ("coffee", "COF-DECAF", "Swiss-water decaf, 250 g", 1190, 560, 14, "All of the taste, none of the caffeine."),
    ("coffee", "COF-CAPSULES", "Compostable capsules, 30 pcs", 1150, 520, 20, "Our espresso blend, compostable."),
    ("brewing", "GEAR-V60", "Pour-over dripper", 2490, 1100, None, "Ceramic cone dripper, size 02."),
    ("brewing", "GEAR-FILTERS", "Paper filters, 100 pcs", 590, 190, 60, "Unbleached filters for the dripper."),
    ("brewing", "GEAR-KETTLE", "Gooseneck kettle", 5990, 3100, None, "Stainless steel, 0.8 l, precise pour."),
    ("brewing", "GEAR-GRINDER", "Hand grinder", 6990, 3600, None, "Conical steel burrs, 30 grind settings."),
    ("brewing", "GEAR-TEAPOT", "Cast-iron teapot, 0.6 l", 4490, 2100, None, "With a removable infuser."),
    ("brewing", "GEAR-INFUSER", "Tea infuser basket", 890, 300, None, "Fine mesh, fits most mugs."),
    ("gifts", "GIFT-TASTING", "Tea tasting box", 2990, 1400, None, "Six teas to discover, 25 g each."),
    ("gifts", "GIFT-COFFEEBOX", "Coffee discovery box", 3490, 1700, None, "Three single origins, 100 g each."),
    ("gifts", "GIFT-MUG", "Stoneware mug", 1490, 600, None, "Hand-glazed, 350 ml."),
    ("gifts", "GIFT-HONEY", "Orange-blossom honey, 250 g", 890, 380, None, "From Valencia, for your tea."),
]
